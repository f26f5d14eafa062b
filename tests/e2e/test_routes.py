"""Every documented (method, path) reaches its RPC through Envoy — never the transcoder's "could not resolve"."""

from __future__ import annotations

import os
import pathlib
import re
from dataclasses import dataclass

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]
API_MAP = pathlib.Path(os.environ.get("LLMLAB_SHARED_DIR", ROOT.parent / "shared")) / "API_MAP.md"
VERBS = ("get", "put", "post", "delete", "patch")
_INT_TYPES = {descriptor_pb2.FieldDescriptorProto.TYPE_INT32, descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
              descriptor_pb2.FieldDescriptorProto.TYPE_UINT32, descriptor_pb2.FieldDescriptorProto.TYPE_UINT64}


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    rpc: str  # "Service/Method"
    url: str  # template filled with sample values

    @property
    def shape(self) -> str:
        return normalise(self.template)


def normalise(path: str) -> str:
    """`/api/experiments/:id` and `/api/experiments/{id}` and `{id=**}` all become `/api/experiments/{}`."""
    path = re.sub(r"\{[^}]*\}", "{}", path)
    return re.sub(r":[A-Za-z_]+", "{}", path).rstrip("/")


def descriptor_routes() -> list[Route]:
    fds = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen" / "llmlab.binpb").read_bytes())
    messages = {}
    for f in fds.file:
        for m in f.message_type:
            messages[f".{f.package}.{m.name}"] = m
    routes = []
    for f in fds.file:
        if not f.package.startswith("llmlab."):
            continue
        for svc in f.service:
            for method in svc.method:
                opts = method.options
                if not opts.HasExtension(annotations_pb2.http):
                    continue
                rule = opts.Extensions[annotations_pb2.http]
                request = messages[method.input_type]
                for r in [rule, *rule.additional_bindings]:
                    verb = r.WhichOneof("pattern")
                    if verb in VERBS:
                        template = getattr(r, verb)
                        routes.append(Route(verb.upper(), template, f"{svc.name}/{method.name}",
                                            fill(template, request)))
    return routes


def fill(template: str, request: descriptor_pb2.DescriptorProto) -> str:
    fields = {fd.name: fd for fd in request.field}

    def sample(match: re.Match[str]) -> str:
        name, _, pattern = match.group(1).partition("=")
        fd = fields.get(name.split(".")[0])
        if fd is not None and fd.type in _INT_TYPES:
            return "2147480000"
        return "sample/with-slash" if pattern == "**" else "sample-id"

    return re.sub(r"\{([^}]*)\}", sample, template)


def api_map_routes(text: str) -> set[tuple[str, str]]:
    """(method, normalised path) of every endpoint row in API_MAP.md, expanding its shorthands."""
    out: set[tuple[str, str]] = set()
    for line in text.splitlines():
        if not line.startswith("| "):
            continue
        cell = re.sub(r"\([^)]*\)", "", line.split("|")[1]).strip()
        if not re.match(r"^(GET|POST|PUT|DELETE|PATCH)\b", cell):
            continue
        methods: list[str] = []
        prev = ""
        for item in (i.strip() for i in cell.split(",")):
            m = re.match(r"^((?:GET|POST|PUT|DELETE|PATCH)(?:/(?:GET|POST|PUT|DELETE|PATCH))*)\s+(\S+)$", item)
            path = m.group(2) if m else item
            if m:
                methods = m.group(1).split("/")
            if path.startswith("..."):  # ".../{id}/cancel": continues the previous path's collection
                suffix = path[3:]
                first = suffix.strip("/").split("/")[0]
                segs = prev.split("/")
                cut = next((i for i in range(len(segs) - 1, 0, -1) if normalise(segs[i]) == normalise(first)),
                           len(segs))
                path = "/".join(segs[:cut]) + suffix
            elif prev and path.split("/")[1] != prev.split("/")[1]:  # ", /fail": sibling of the previous
                path = prev.rsplit("/", 1)[0] + path
            prev = path
            for verb in methods:
                out.add((verb, normalise(path)))
    return out


ROUTES = descriptor_routes()


def test_descriptor_has_routes():
    assert len(ROUTES) > 100


@pytest.mark.skipif(not API_MAP.exists(), reason="shared/API_MAP.md is not beside the repo")
def test_every_api_map_endpoint_has_an_rpc():
    documented = api_map_routes(API_MAP.read_text())
    assert len(documented) > 90
    served = {(r.method, r.shape) for r in ROUTES}
    missing = sorted(documented - served)
    assert not missing, f"API_MAP endpoints without an RPC: {missing}"


def error_message(body: dict) -> str:
    err = body.get("error")
    if isinstance(err, dict):
        return err.get("message", "")
    return body.get("message", "")


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.template}")
async def test_route_reaches_its_rpc(http, route):
    kwargs = {"json": {}} if route.method in ("POST", "PUT", "PATCH") else {}
    r = await http.request(route.method, route.url, **kwargs)
    assert r.status_code not in (502, 503), r.text
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    body = body if isinstance(body, dict) else {}
    message = error_message(body)
    assert not message.startswith("Could not resolve"), f"{route.method} {route.url} did not reach {route.rpc}"
    if r.status_code == 501:
        assert message == f"{route.rpc.split('/')[1]} is not implemented yet", (route, message)


async def test_literal_segments_win_over_templates(http):
    history = await http.get("/api/experiments/history")
    assert history.status_code == 200 and "timeline_data" in history.json()["data"]
    # Each answer is one only its own RPC gives (docs: protos/llmlab/experiments/v1/responses_service.proto).
    comparison = await http.get("/api/responses/comparison")
    assert comparison.status_code == 200 and "filters_applied" in comparison.json()["meta"]
    trends = await http.get("/api/metrics/trends")
    assert trends.status_code == 200 and "trends" in trends.json()["data"]
    for path, message in [
        ("/api/responses/single/999991", "Response(s) not found: 999991"),
        ("/api/responses/999991", "Experiment with ID 999991 not found"),
        ("/api/metrics/999991", "No scores for response(s) 999991: unknown responses, or not scored yet"),
    ]:
        r = await http.get(path)
        assert r.status_code == 404 and error_message(r.json()) == message, path
