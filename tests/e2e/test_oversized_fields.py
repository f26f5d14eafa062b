"""A ~900 KB field to every write route while unrelated requests run against every service: each bad request is
refused in its family's shape, and no unrelated request fails (docs/hardening.md, "Bounded errors").

Before errors were bounded, the whole value rode back in the error's gRPC trailer, past Envoy's header limit; Envoy
then reset the HTTP/2 connection to the service and the requests sharing it failed with 502.
"""

import asyncio
import pathlib

import httpx
from google.protobuf import descriptor_pb2

from llmlab.runtime.httprules import family, file_set_bindings

from .test_hardening import assert_family_error

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIG = "a" * 900_000
WRITES = ("POST", "PUT", "PATCH", "DELETE")
# One cheap read per service whose answer is known before the load starts.
UNRELATED = {"experiments": "/api/experiments", "inference": "/v1/models", "auth": "/v1/auth/api-keys",
             "analytics": "/api/health", "metrics": "/api/metrics/1", "files": "/v1/files"}
def _messages(fds: descriptor_pb2.FileDescriptorSet) -> dict[str, descriptor_pb2.DescriptorProto]:
    out = {}
    for f in fds.file:
        for m in f.message_type:
            out[f".{f.package}.{m.name}"] = m
    return out


def write_routes() -> list[tuple[str, str, dict]]:
    """(verb, concrete path, JSON body with every top-level string field set to BIG) for each write binding."""
    fds = descriptor_pb2.FileDescriptorSet.FromString((ROOT / "gen" / "llmlab.binpb").read_bytes())
    messages = _messages(fds)
    inputs = {f"/{f.package}.{s.name}/{m.name}": m.input_type for f in fds.file for s in f.service for m in s.method}
    routes = []
    for b in file_set_bindings(fds.file):
        if b.verb not in WRITES or not b.template.startswith("/") or "/uploads" in b.template:
            continue
        path = "/".join("1" if part.startswith("{") else part for part in b.template.split("/"))
        msg = messages.get(inputs[b.rpc])
        if b.body not in ("", "*") and msg is not None:
            field = next((f for f in msg.field if f.name == b.body), None)
            msg = messages.get(field.type_name) if field is not None else None
        strings = [f.name for f in msg.field if f.type == f.TYPE_STRING] if msg is not None else []
        if msg is None or msg.name == "HttpBody" or not strings:
            strings = ["model"]  # OpenAI-shaped bodies the service parses itself
        routes.append((b.verb, path, {name: BIG for name in strings[:1]}))
    return routes


async def test_a_huge_field_anywhere_is_refused_and_hurts_no_other_request(platform, http):
    routes = write_routes()
    assert len(routes) > 40
    expected = {svc: (await http.get(path)).status_code for svc, path in UNRELATED.items()}
    assert all(code < 500 or code == 501 for code in expected.values()), expected

    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=60, headers=platform.auth_headers,
                                 limits=httpx.Limits(max_connections=64)) as client:
        async def bad(verb: str, path: str, body: dict) -> tuple[str, str, httpx.Response]:
            return verb, path, await client.request(verb, path, json=body)

        async def unrelated(svc: str) -> list[tuple[str, int]]:
            out = []
            for _ in range(16):
                out.append((svc, (await client.get(UNRELATED[svc])).status_code))
            return out

        bad_tasks = [bad(*route) for route in routes]
        load = [unrelated(svc) for svc in UNRELATED for _ in range(2)]
        results = await asyncio.gather(*bad_tasks, *load)

    refused = results[: len(bad_tasks)]
    statuses = {}
    for verb, path, r in refused:
        assert r.status_code < 500 or r.status_code == 501, (verb, path, r.status_code, r.text[:300])
        assert len(r.content) < 4096, (verb, path, len(r.content))
        assert_family_error(r, family(path), r.status_code)
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
    assert statuses.get(400, 0) >= 10, statuses
    for batch in results[len(bad_tasks):]:
        for svc, code in batch:
            assert code == expected[svc], (svc, code, expected[svc])
