"""The OpenAPI 3.1 document of the gateway's REST surface, built from the descriptor set and its http rules.

Everything per route comes from the protos (gen/llmlab.binpb): paths and verbs, path and query parameters as
Envoy's transcoder binds them, request and response schemas, summaries from the RPC comments. The tables below
hold only what the protos cannot say: which path prefix is which API family and the error body each family gets
from gateway/errors.lua, the credential schemes (docs/auth.md), and the media types behind the google.api.HttpBody
routes, whose bytes the services write themselves.
"""

from __future__ import annotations

import re
from typing import Any

from google.protobuf import descriptor_pb2

from llmlab.runtime.httprules import CREATED_RPCS, PUBLIC_RPCS, Binding, family, file_set_bindings

from .schemas import QUERY_WELL_KNOWN, WELL_KNOWN, F, Registry, ref
from .shapes import (
    ERROR_SCHEMAS,
    HTTP_BODY_REQUESTS,
    HTTP_BODY_RESPONSES,
    HTTP_BODY_TYPES,
    OPENAI_SCHEMAS,
    SECURITY_SCHEMES,
)

HTTP_BODY = ".google.api.HttpBody"
OPENAPI_METHODS = {"GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"}
PARAM_RE = re.compile(r"\{([^}=]+)(?:=([^}]*))?\}")
QUERY_DEPTH = 3  # nested request messages bound as `a.b.c=` query parameters, as Envoy does


def _error_response(fam: str) -> dict:
    name = "research" if fam == "ops" else fam
    return {"$ref": f"#/components/responses/{name}_error"}


def _summary(comment: str) -> str:
    """The comment's first sentence on one line (at most 160 characters)."""
    first = " ".join(comment.split()).split(". ")[0].rstrip(".")
    return first if len(first) <= 160 else first[:157] + "..."


class DocumentBuilder:
    """Turns the http bindings of a descriptor set into OpenAPI paths and components."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.fds = fds
        self.reg = Registry(fds)
        self.methods: dict[str, descriptor_pb2.MethodDescriptorProto] = {}
        for f in fds.file:
            for svc in f.service:
                for m in svc.method:
                    self.methods[f"/{f.package}.{svc.name}/{m.name}"] = m
        self.roots_out: list[str] = []
        self.roots_in: list[str] = []

    # ------------------------------------------------------------------ parameters

    def _query_params(self, msg_name: str, prefix: str, depth: int, out: list[dict]) -> None:
        msg = self.reg.messages[msg_name]
        for fd in msg.fields():
            name = prefix + fd.name
            entry = self.reg.messages.get(fd.type_name)
            if entry is not None and entry.is_map_entry:
                continue  # maps cannot be bound from a query string
            if fd.type == F.TYPE_MESSAGE and fd.type_name not in QUERY_WELL_KNOWN:
                if fd.label != F.LABEL_REPEATED and fd.type_name not in WELL_KNOWN and depth < QUERY_DEPTH:
                    self._query_params(fd.type_name, name + ".", depth + 1, out)
                continue
            schema = self.reg.field_schema(fd, inp=True)
            if fd.type == F.TYPE_ENUM:
                self.roots_in.append(fd.type_name)
            param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
            if fd.label == F.LABEL_REPEATED:
                param.update(style="form", explode=True)
            comment = msg.field_comments.get(fd.name)
            if comment:
                param["description"] = comment
            out.append(param)

    def _path_params(self, binding: Binding, request: str) -> tuple[str, list[dict], set[str]]:
        """The OpenAPI path (``{id=**}`` -> ``{id}``), its parameters and the top-level request fields they bind."""
        params: list[dict] = []
        bound: set[str] = set()
        msg = self.reg.messages[request]
        for name, pattern in PARAM_RE.findall(binding.template):
            top = name.split(".")[0]
            bound.add(top)
            fd = next((f for f in msg.fields() if f.name == top), None)
            schema = self.reg.scalar(fd, inp=True) if fd is not None and "." not in name else {"type": "string"}
            if "$ref" in schema:  # an enum
                self.roots_in.append(fd.type_name)  # type: ignore[union-attr]
            description = msg.field_comments.get(top, "")
            param = {"name": name, "in": "path", "required": True, "schema": schema}
            if pattern == "**":  # Envoy binds the rest of the path, slashes included
                description = (description + " " if description else "") + "May contain `/`."
                param["x-multi-segment"] = True
            if description:
                param["description"] = description
            params.append(param)
        return PARAM_RE.sub(lambda m: "{" + m.group(1) + "}", binding.template), params, bound

    # ------------------------------------------------------------------ bodies

    def _request_body(self, binding: Binding, request: str, bound: set[str]) -> dict | None:
        if not binding.body:
            return None
        if binding.body == "*":
            schema = self.reg.message_schema(request, inp=True, skip=frozenset(bound))
            self._roots_of(request, self.roots_in)
            return {"required": True, "content": {"application/json": {"schema": schema}}}
        fd = next(f for f in self.reg.messages[request].fields() if f.name == binding.body)
        if fd.type_name == HTTP_BODY:
            content = HTTP_BODY_REQUESTS.get(binding.rpc, {"application/octet-stream": {"schema": {}}})
            return {"required": True, "content": content}
        schema = self.reg.field_schema(fd, inp=True)
        if fd.type_name:
            self.roots_in.append(fd.type_name)
        return {"required": True, "content": {"application/json": {"schema": schema}}}

    def _roots_of(self, name: str, roots: list[str]) -> None:
        for fd in self.reg.messages[name].fields():
            if fd.type_name:
                entry = self.reg.messages.get(fd.type_name)
                if entry is not None and entry.is_map_entry:
                    roots.extend(f.type_name for f in entry.fields() if f.type_name)
                else:
                    roots.append(fd.type_name)

    def _success(self, binding: Binding, method: descriptor_pb2.MethodDescriptorProto) -> dict:
        output = method.output_type
        if output == HTTP_BODY:
            content = HTTP_BODY_RESPONSES.get(binding.rpc, {"application/octet-stream": {"schema": {}}})
            return {"description": "OK", "content": content}
        if binding.response_body:
            fd = next(f for f in self.reg.messages[output].fields() if f.name == binding.response_body)
            schema = self.reg.field_schema(fd, inp=False)
            if fd.type_name:
                self.roots_out.append(fd.type_name)
        else:
            schema = ref(output)
            self.roots_out.append(output)
        if method.server_streaming:
            sse = {
                "type": "string",
                "description": "Server-sent events: one `data: <JSON>` event per message, each message as "
                f"`{output.lstrip('.')}`.",
                "x-event-data": schema,
            }
            return {"description": "OK (server-sent events)", "content": {"text/event-stream": {"schema": sse}}}
        return {"description": "OK", "content": {"application/json": {"schema": schema}}}

    # ------------------------------------------------------------------ document

    def operation(self, binding: Binding, op_id: str) -> tuple[str, dict]:
        method = self.methods[binding.rpc]
        path, params, bound = self._path_params(binding, method.input_type)
        if binding.body != "*":
            query: list[dict] = []
            self._query_params(method.input_type, "", 0, query)
            params += [p for p in query if p["name"].split(".")[0] not in bound | {binding.body}]
        comment = self.reg.method_comments.get(binding.rpc, "")
        fam = family(path)
        op: dict[str, Any] = {
            "operationId": op_id,
            "tags": [binding.service.rsplit(".", 1)[1]],
            "summary": _summary(comment) or binding.method,
            "description": comment,
            "x-rpc": binding.rpc,
            "x-family": fam,
        }
        if params:
            op["parameters"] = params
        body = self._request_body(binding, method.input_type, bound)
        if body is not None:
            op["requestBody"] = body
        success = self._success(binding, method)
        if binding.rpc in CREATED_RPCS:
            success = {**success, "description": "Created"}
        op["responses"] = {"201" if binding.rpc in CREATED_RPCS else "200": success, "4XX": _error_response(fam),
                           "5XX": _error_response(fam)}
        if binding.rpc in PUBLIC_RPCS:
            op["security"] = []
        return path, op

    def build(self, version: str) -> dict:
        paths: dict[str, dict] = {}
        seen_ids: set[str] = set()
        own = [f for f in self.fds.file if f.package.startswith("llmlab.")]
        for binding in file_set_bindings(own):
            if binding.verb not in OPENAPI_METHODS:
                continue
            op_id = f"{binding.service.rsplit('.', 1)[1]}.{binding.method}"
            n = 2
            while op_id in seen_ids:
                op_id = f"{binding.service.rsplit('.', 1)[1]}.{binding.method}.{n}"
                n += 1
            seen_ids.add(op_id)
            path, op = self.operation(binding, op_id)
            paths.setdefault(path, {})[binding.verb.lower()] = op
        self.roots_out.extend(HTTP_BODY_TYPES)
        schemas = {**self.reg.components(self.roots_out, inp=False), **self.reg.components(self.roots_in, inp=True)}
        schemas.update(ERROR_SCHEMAS)
        schemas.update(OPENAI_SCHEMAS)
        responses = {
            f"{fam}_error": {
                "description": f"An error in the {fam} family's shape (gateway/errors.lua).",
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{fam}_error"}}},
            }
            for fam in ("lab", "research", "serving", "native")
        }
        return {
            "openapi": "3.1.0",
            "info": {
                "title": "llmlab",
                "version": version,
                "description": "Every REST route of the llmlab gateway, generated from the protos (protos/) and "
                "their google.api.http rules by `python -m llmlab.openapi`. API families: lab (`/api/...`, "
                "envelope `{success, data, meta}`), research (bare objects), serving (`/v1/...`, OpenAI shapes), "
                "native (`/api/v1/...`) and ops (`/health...`, `/metrics`); each has its own error body.",
            },
            "servers": [{"url": "/"}],
            "security": [{name: []} for name in SECURITY_SCHEMES],
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": dict(sorted(schemas.items())),
                "responses": responses,
                "securitySchemes": SECURITY_SCHEMES,
            },
        }


def build_document(descriptor_bytes: bytes, version: str) -> dict:
    """The OpenAPI 3.1 document (a JSON-ready dict) of the descriptor set's http rules."""
    return DocumentBuilder(descriptor_pb2.FileDescriptorSet.FromString(descriptor_bytes)).build(version)
