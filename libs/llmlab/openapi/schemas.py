"""Proto messages as the JSON Schemas (OpenAPI 3.1) of what a client sends and reads through the gateway.

The gateway's transcoder prints proto3 JSON with ``preserve_proto_field_names`` and
``always_print_primitive_fields`` (gateway/render.py): field names are the proto names, 64-bit integers are strings,
enums are their value names, well-known types have their proto3 JSON forms, and every field without presence
(plain scalars, enums, repeated and map fields) is always printed — those are ``required`` in responses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from google.protobuf import descriptor_pb2

F = descriptor_pb2.FieldDescriptorProto
INT32 = {F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32}
UINT32 = {F.TYPE_UINT32, F.TYPE_FIXED32}
INT64 = {F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64, F.TYPE_UINT64, F.TYPE_FIXED64}
INT64_SCHEMA = {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}

# Well-known types in proto3 JSON (protobuf's "JSON Mapping" table).
WELL_KNOWN: dict[str, dict] = {
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    ".google.protobuf.FieldMask": {"type": "string"},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.Any": {"type": "object", "properties": {"@type": {"type": "string"}}, "required": ["@type"]},
    ".google.protobuf.DoubleValue": {"type": ["number", "null"]},
    ".google.protobuf.FloatValue": {"type": ["number", "null"]},
    ".google.protobuf.Int64Value": {**INT64_SCHEMA, "type": ["string", "null"]},
    ".google.protobuf.UInt64Value": {**INT64_SCHEMA, "type": ["string", "null"]},
    ".google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    ".google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "int32", "minimum": 0},
    ".google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    ".google.protobuf.StringValue": {"type": ["string", "null"]},
    ".google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}
# Types a query parameter can carry (Envoy binds primitives, repeated primitives and wrappers).
QUERY_WELL_KNOWN = {k for k in WELL_KNOWN if k.endswith("Value") and k not in (".google.protobuf.Value",
                                                                                ".google.protobuf.ListValue")}
QUERY_WELL_KNOWN |= {".google.protobuf.Timestamp", ".google.protobuf.Duration", ".google.protobuf.FieldMask"}


INPUT_SUFFIX = "-Input"


def component_name(type_name: str, inp: bool = False) -> str:
    """".llmlab.experiments.v1.Experiment" -> "llmlab.experiments.v1.Experiment" (a valid component key); the
    request-side view (nothing required) of a message gets "-Input" appended. Enums have one view."""
    return type_name.lstrip(".") + (INPUT_SUFFIX if inp else "")


def ref(type_name: str, inp: bool = False) -> dict:
    return {"$ref": f"#/components/schemas/{component_name(type_name, inp)}"}


@dataclass
class Message:
    """A message of the descriptor set with the comments of it and its fields."""

    name: str  # ".llmlab.x.v1.Foo"
    proto: descriptor_pb2.DescriptorProto
    comment: str = ""
    field_comments: dict[str, str] = field(default_factory=dict)

    def fields(self) -> list[descriptor_pb2.FieldDescriptorProto]:
        return list(self.proto.field)

    @property
    def is_map_entry(self) -> bool:
        return self.proto.options.map_entry


def _clean(comment: str) -> str:
    lines = [ln.strip() for ln in comment.strip().splitlines()]
    return "\n".join(ln for ln in lines if not ln.startswith("buf:lint:")).strip()


class Registry:
    """Messages, enums and comments of a descriptor set, and the schemas they render as."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.messages: dict[str, Message] = {}
        self.enums: dict[str, descriptor_pb2.EnumDescriptorProto] = {}
        self.enum_comments: dict[str, str] = {}
        self.method_comments: dict[str, str] = {}  # "/pkg.Service/Method" -> comment
        for f in fds.file:
            comments = {tuple(loc.path): _clean(loc.leading_comments) for loc in f.source_code_info.location}
            prefix = f".{f.package}" if f.package else ""
            for i, m in enumerate(f.message_type):
                self._add_message(f"{prefix}.{m.name}", m, (4, i), comments)
            for i, e in enumerate(f.enum_type):
                self._add_enum(f"{prefix}.{e.name}", e, (5, i), comments)
            for si, svc in enumerate(f.service):
                for mi, meth in enumerate(svc.method):
                    self.method_comments[f"/{f.package}.{svc.name}/{meth.name}"] = comments.get((6, si, 2, mi), "")

    def _add_message(self, name: str, m: descriptor_pb2.DescriptorProto, path: tuple, comments: dict) -> None:
        msg = Message(name, m, comments.get(path, ""))
        for i, fd in enumerate(m.field):
            msg.field_comments[fd.name] = comments.get((*path, 2, i), "")
        self.messages[name] = msg
        for i, nested in enumerate(m.nested_type):
            self._add_message(f"{name}.{nested.name}", nested, (*path, 3, i), comments)
        for i, e in enumerate(m.enum_type):
            self._add_enum(f"{name}.{e.name}", e, (*path, 4, i), comments)

    def _add_enum(self, name: str, e: descriptor_pb2.EnumDescriptorProto, path: tuple, comments: dict) -> None:
        self.enums[name] = e
        self.enum_comments[name] = comments.get(path, "")

    # ------------------------------------------------------------------ field and message schemas

    def scalar(self, fd: descriptor_pb2.FieldDescriptorProto, inp: bool) -> dict:
        """The schema of one value of a field (ignoring `repeated`)."""
        t = fd.type
        if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
            return {"type": "number"}
        if t in INT32:
            return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
        if t in UINT32:
            return {"type": "integer", "format": "int32", "minimum": 0, "maximum": 2**32 - 1}
        if t in INT64:
            return dict(INT64_SCHEMA)
        if t == F.TYPE_BOOL:
            return {"type": "boolean"}
        if t == F.TYPE_STRING:
            return {"type": "string"}
        if t == F.TYPE_BYTES:
            return {"type": "string", "contentEncoding": "base64"}
        if t == F.TYPE_ENUM:
            if fd.type_name == ".google.protobuf.NullValue":
                return {"type": "null"}
            return ref(fd.type_name)
        if fd.type_name in WELL_KNOWN:
            return dict(WELL_KNOWN[fd.type_name])
        return ref(fd.type_name, inp)

    def field_schema(self, fd: descriptor_pb2.FieldDescriptorProto, inp: bool) -> dict:
        entry = self.messages.get(fd.type_name)
        if entry is not None and entry.is_map_entry:
            value = next(f for f in entry.fields() if f.name == "value")
            schema: dict = {"type": "object", "additionalProperties": self.scalar(value, inp)}
        elif fd.label == F.LABEL_REPEATED:
            schema = {"type": "array", "items": self.scalar(fd, inp)}
        else:
            schema = self.scalar(fd, inp)
        return schema

    @staticmethod
    def has_presence(fd: descriptor_pb2.FieldDescriptorProto) -> bool:
        """Whether proto3 JSON may leave the field out: messages, `optional` and oneof members."""
        return (
            fd.label != F.LABEL_REPEATED and fd.type in (F.TYPE_MESSAGE, F.TYPE_GROUP)
        ) or fd.HasField("oneof_index") or fd.proto3_optional

    def message_schema(self, name: str, inp: bool, skip: frozenset[str] = frozenset()) -> dict:
        """The object schema of a message as a response carries it (fields without presence required, since the
        gateway always prints them) or as a request may (``inp``: nothing required); ``skip`` leaves out fields
        bound elsewhere (path parameters)."""
        msg = self.messages[name]
        props: dict[str, dict] = {}
        required: list[str] = []
        for fd in msg.fields():
            if fd.name in skip:
                continue
            schema = self.field_schema(fd, inp)
            comment = msg.field_comments.get(fd.name)
            if comment:
                schema = {**schema, "description": comment}  # OpenAPI 3.1 allows siblings of $ref
            props[fd.name] = schema
            if not inp and not self.has_presence(fd):
                required.append(fd.name)
        out: dict = {"type": "object", "properties": props}
        if msg.comment:
            out["description"] = msg.comment
        if required:
            out["required"] = required
        return out

    def enum_schema(self, name: str) -> dict:
        values = [v.name for v in self.enums[name].value]
        out: dict = {"type": "string", "enum": values}
        if self.enum_comments.get(name):
            out["description"] = self.enum_comments[name]
        return out

    def closure(self, roots: list[str]) -> Iterator[str]:
        """Every message and enum reachable from ``roots`` (type names with a leading dot), each once."""
        seen: set[str] = set()
        todo = list(roots)
        while todo:
            name = todo.pop()
            if name in seen or name in WELL_KNOWN:
                continue
            seen.add(name)
            yield name
            msg = self.messages.get(name)
            if msg is None:
                continue
            for fd in msg.fields():
                if fd.type_name and fd.type_name != ".google.protobuf.NullValue":
                    entry = self.messages.get(fd.type_name)
                    if entry is not None and entry.is_map_entry:
                        todo.extend(f.type_name for f in entry.fields() if f.type_name)
                    else:
                        todo.append(fd.type_name)

    def components(self, roots: list[str], inp: bool) -> dict[str, dict]:
        """Component schemas (one view) of everything reachable from ``roots``."""
        out: dict[str, dict] = {}
        for name in sorted(self.closure(roots)):
            if name in self.enums:
                out[component_name(name)] = self.enum_schema(name)
            elif not self.messages[name].is_map_entry:
                out[component_name(name, inp)] = self.message_schema(name, inp)
        return out
