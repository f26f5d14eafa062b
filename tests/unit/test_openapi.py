"""docs/openapi.json is what the protos give (regenerated here), a valid OpenAPI 3.1 document, and says what the
gateway does: every http binding, proto3 JSON types, the families' envelopes and error bodies, public routes."""

from __future__ import annotations

import json
import pathlib

import pytest
from google.protobuf import descriptor_pb2
from openapi_spec_validator import validate

from llmlab.openapi import build_document, dumps, family
from llmlab.openapi.schemas import Registry
from llmlab.runtime.httprules import PUBLIC_RPCS, file_set_bindings
from llmlab.runtime.settings import VERSION

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"
DESCRIPTOR = (ROOT / "gen" / "llmlab.binpb").read_bytes()
DOC = build_document(DESCRIPTOR, VERSION)
F = descriptor_pb2.FieldDescriptorProto


def test_committed_document_matches_the_protos():
    assert COMMITTED.exists() and COMMITTED.read_text() == dumps(DOC), (
        "docs/openapi.json drifted from the protos: run `.venv/bin/python -m llmlab.openapi` (after "
        "scripts/gen_protos.py) and commit docs/openapi.json"
    )


def test_document_is_valid_openapi_3_1():
    assert DOC["openapi"] == "3.1.0"
    validate(json.loads(dumps(DOC)))


def test_every_http_binding_is_an_operation():
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR)
    bindings = file_set_bindings(f for f in fds.file if f.package.startswith("llmlab."))
    ops = {(op["x-rpc"], verb.upper(), path) for path, item in DOC["paths"].items() for verb, op in item.items()}
    assert len(bindings) > 100 and len(ops) == len(bindings)
    for b in bindings:
        path = b.template.replace("=**}", "}")
        assert (b.rpc, b.verb, path) in ops, b
    # additional_bindings: both spellings of fine-tuning jobs are documented
    assert "get" in DOC["paths"]["/v1/fine-tuning/jobs"] and "get" in DOC["paths"]["/v1/fine_tuning/jobs"]


def test_public_routes_have_no_security_and_the_rest_need_a_credential():
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearer_jwt"] == {**schemes["bearer_jwt"], "type": "http", "scheme": "bearer"}
    assert schemes["api_key_header"]["name"] == "X-API-Key" and schemes["api_key_header"]["in"] == "header"
    assert {next(iter(s)) for s in DOC["security"]} == set(schemes)
    for item in DOC["paths"].values():
        for op in item.values():
            assert ("security" in op and op["security"] == []) == (op["x-rpc"] in PUBLIC_RPCS), op["operationId"]
    assert DOC["paths"]["/openapi.json"]["get"]["security"] == [] and DOC["paths"]["/docs"]["get"]["security"] == []


@pytest.mark.parametrize(
    ("path", "verb", "fam"),
    [("/api/experiments", "get", "lab"), ("/api/v1/generate", "post", "native"), ("/v1/models", "get", "serving"),
     ("/experiments", "get", "research"), ("/health", "get", "ops")],
)
def test_errors_have_the_family_shape(path, verb, fam):
    op = DOC["paths"][path][verb]
    assert family(path) == fam == op["x-family"]
    want = f"#/components/responses/{'research' if fam == 'ops' else fam}_error"
    assert op["responses"]["4XX"] == {"$ref": want} and op["responses"]["5XX"] == {"$ref": want}
    error = DOC["components"]["schemas"][want.rsplit("/", 1)[1].replace("_error", "") + "_error"]
    assert "request_id" in json.dumps(error)


def test_lab_envelope_research_bare_and_openai_routes():
    schemas = DOC["components"]["schemas"]
    lab = DOC["paths"]["/api/experiments"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schemas[lab["$ref"].rsplit("/", 1)[1]]["properties"]) == {"success", "data", "meta"}
    research = DOC["paths"]["/experiments/{id}"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert "success" not in schemas[research["$ref"].rsplit("/", 1)[1]]["properties"]
    chat = DOC["paths"]["/v1/chat/completions"]["post"]
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionRequest")
    stream = DOC["paths"]["/api/v1/generate/stream"]["post"]["responses"]["200"]["content"]
    assert set(stream) == {"text/event-stream"}
    assert DOC["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


def test_path_and_query_parameters_as_envoy_binds_them():
    get = DOC["paths"]["/api/experiments/{id}"]["get"]
    assert [(p["name"], p["in"], p["schema"]["type"]) for p in get["parameters"]] == [("id", "path", "integer")]
    listing = {p["name"]: p for p in DOC["paths"]["/api/experiments"]["get"]["parameters"]}
    assert {"page", "limit", "search", "status", "sort_by"} <= set(listing)
    assert all(p["in"] == "query" and not p["required"] for p in listing.values())
    put = DOC["paths"]["/api/experiments/{id}"]["put"]
    assert "id" not in put["requestBody"]["content"]["application/json"]["schema"]["properties"]
    model = DOC["paths"]["/v1/models/{id}"]["get"]["parameters"][0]
    assert model["name"] == "id" and "May contain `/`" in model["description"]


def _sample_registry() -> Registry:
    """A message with every kind of field proto3 JSON treats specially."""
    f = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    enum = f.enum_type.add(name="Color")
    enum.value.add(name="COLOR_UNSPECIFIED", number=0)
    enum.value.add(name="RED", number=1)
    m = f.message_type.add(name="M")
    m.oneof_decl.add(name="choice")
    m.oneof_decl.add(name="_maybe")
    entry = m.nested_type.add(name="LabelsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    fields = [
        ("count", F.TYPE_INT64, ""), ("ucount", F.TYPE_UINT32, ""), ("ratio", F.TYPE_DOUBLE, ""),
        ("color", F.TYPE_ENUM, ".t.Color"), ("when", F.TYPE_MESSAGE, ".google.protobuf.Timestamp"),
        ("temp", F.TYPE_MESSAGE, ".google.protobuf.DoubleValue"), ("extra", F.TYPE_MESSAGE, ".google.protobuf.Struct"),
        ("anything", F.TYPE_MESSAGE, ".google.protobuf.Value"), ("raw", F.TYPE_BYTES, ""),
        ("labels", F.TYPE_MESSAGE, ".t.M.LabelsEntry"),
    ]
    for i, (name, t, type_name) in enumerate(fields, 1):
        label = F.LABEL_REPEATED if name == "labels" else F.LABEL_OPTIONAL
        m.field.add(name=name, number=i, type=t, type_name=type_name, label=label)
    m.field.add(name="a", number=20, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=0)
    m.field.add(name="maybe", number=21, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL, oneof_index=1,
                proto3_optional=True)
    m.field.add(name="tags", number=22, type=F.TYPE_STRING, label=F.LABEL_REPEATED)
    return Registry(descriptor_pb2.FileDescriptorSet(file=[f]))


def test_proto3_json_mapping():
    reg = _sample_registry()
    out = reg.components([".t.M"], inp=False)
    props = out["t.M"]["properties"]
    assert props["count"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    assert props["ucount"]["minimum"] == 0 and props["ratio"] == {"type": "number"}
    assert props["color"] == {"$ref": "#/components/schemas/t.Color"} and out["t.Color"]["enum"] == [
        "COLOR_UNSPECIFIED", "RED"]
    assert props["when"] == {"type": "string", "format": "date-time"}
    assert props["temp"] == {"type": ["number", "null"]}
    assert props["extra"] == {"type": "object", "additionalProperties": True} and props["anything"] == {}
    assert props["raw"]["contentEncoding"] == "base64"
    assert props["labels"] == {"type": "object", "additionalProperties": props["count"]}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}}
    # Always printed by the gateway: fields without presence. Messages, oneof members and `optional` may be absent.
    assert set(out["t.M"]["required"]) == {"count", "ucount", "ratio", "color", "raw", "labels", "tags"}
    inp = reg.components([".t.M"], inp=True)
    assert "required" not in inp["t.M-Input"] and "t.M" not in inp
