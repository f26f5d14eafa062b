"""The one reader of google.api.http: every pattern kind and binding, and its users (gateway, auth routes, metrics
labels, OpenAPI) all see the same bindings."""

from __future__ import annotations

import pathlib

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from gateway.render import transcoded_services
from llmlab.runtime.httprules import PUBLIC_RPCS, file_set_bindings, http_route, method_bindings
from services.auth.routes import load_routes

ROOT = pathlib.Path(__file__).resolve().parents[2]
DESCRIPTOR = (ROOT / "gen" / "llmlab.binpb").read_bytes()


def _method(rule: http_pb2.HttpRule) -> descriptor_pb2.MethodDescriptorProto:
    m = descriptor_pb2.MethodDescriptorProto(name="Do", input_type=".t.Req", output_type=".t.Res")
    m.options.Extensions[annotations_pb2.http].CopyFrom(rule)
    # As read from a descriptor set: options arrive serialized, the extension maybe unknown until re-parsed.
    return descriptor_pb2.MethodDescriptorProto.FromString(m.SerializeToString())


def test_every_pattern_kind_and_additional_bindings():
    rule = http_pb2.HttpRule(post="/v1/things", body="*", response_body="thing")
    rule.additional_bindings.add(put="/v1/things/{id=**}", body="thing")
    rule.additional_bindings.add(delete="/v1/things/{id}")
    rule.additional_bindings.add(patch="/v1/things/{id}", body="*")
    rule.additional_bindings.add(get="/v1/things/{id}")
    rule.additional_bindings.add(custom=http_pb2.CustomHttpPattern(kind="head", path="/v1/things"))
    got = [(b.verb, b.template, b.body, b.response_body, b.primary) for b in method_bindings("t.Svc", _method(rule))]
    assert got == [
        ("POST", "/v1/things", "*", "thing", True),
        ("PUT", "/v1/things/{id=**}", "thing", "", False),
        ("DELETE", "/v1/things/{id}", "", "", False),
        ("PATCH", "/v1/things/{id}", "*", "", False),
        ("GET", "/v1/things/{id}", "", "", False),
        ("HEAD", "/v1/things", "", "", False),
    ]
    assert method_bindings("t.Svc", _method(rule))[0].rpc == "/t.Svc/Do"
    assert method_bindings("t.Svc", descriptor_pb2.MethodDescriptorProto(name="Internal")) == []


def test_gateway_auth_metrics_and_openapi_read_the_same_bindings():
    fds = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR)
    own = [f for f in fds.file if f.package.startswith("llmlab.")]
    bindings = file_set_bindings(own)
    # auth's route table (from the imported stubs) == the descriptor set's bindings
    assert sorted((r.verb, r.template, r.rpc) for r in load_routes()) == sorted(
        (b.verb, b.template, b.rpc) for b in bindings)
    # the gateway transcodes exactly the services that have bindings
    assert {s.full_name for s in transcoded_services(DESCRIPTOR)} == {b.service for b in bindings}
    # metrics label an RPC with its primary binding
    for b in bindings:
        if b.primary:
            assert http_route(b.rpc) == (b.verb, b.template)
    # additional bindings are read everywhere (both fine-tuning spellings)
    ft = [b.template for b in bindings if b.method == "ListFineTuningJobs"]
    assert sorted(ft) == ["/v1/fine-tuning/jobs", "/v1/fine_tuning/jobs"]
    assert PUBLIC_RPCS <= {b.rpc for b in bindings}


def test_the_family_of_a_path_is_decided_once():
    from llmlab.runtime.httprules import family

    cases = {"/api/v1/generate": "native", "/api/v1": "native", "/api/experiments?x=1": "lab", "/api": "lab",
             "/v1/chat/completions": "serving", "/health/detailed": "ops", "/healthz": "ops", "/metrics": "ops",
             "/models": "research", "/experiments/x": "research", "/apix": "research", "/v1x": "research"}
    assert {path: family(path) for path in cases} == cases
