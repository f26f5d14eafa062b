"""Every route of the project's OpenAPI document (docs/openapi.json, generated from the protos) reaches its RPC
through Envoy — never the transcoder's "could not resolve" — and the gateway serves that document and its reference.
"""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "docs" / "openapi.json").read_text())


@dataclass(frozen=True)
class Route:
    method: str
    template: str  # the OpenAPI path: "/api/experiments/{id}"
    rpc: str  # "Service/Method"
    url: str  # template filled with sample values
    public: bool  # no credential needed (the operation's `security` is empty)

    @property
    def shape(self) -> str:
        return normalise(self.template)


def normalise(path: str) -> str:
    """`/api/experiments/:id` and `/api/experiments/{id}` and `{id=**}` all become `/api/experiments/{}`."""
    path = re.sub(r"\{[^}]*\}", "{}", path)
    return re.sub(r":[A-Za-z_]+", "{}", path).rstrip("/")


def fill(template: str, parameters: list[dict]) -> str:
    """Sample values: a large int for integer parameters, a value with a slash where one may appear."""
    samples = {}
    for p in parameters:
        if p["in"] != "path":
            continue
        if p["schema"].get("type") == "integer":
            samples[p["name"]] = "2147480000"
        else:
            samples[p["name"]] = "sample/with-slash" if p.get("x-multi-segment") else "sample-id"
    return re.sub(r"\{([^}]*)\}", lambda m: samples[m.group(1)], template)


def document_routes(document: dict) -> list[Route]:
    routes = []
    for path, item in document["paths"].items():
        for verb, op in item.items():
            rpc = op["x-rpc"].lstrip("/").split("/", 1)
            routes.append(Route(verb.upper(), path, f"{rpc[0].rsplit('.', 1)[1]}/{rpc[1]}",
                                fill(path, op.get("parameters", [])), op.get("security") == []))
    return routes


ROUTES = document_routes(OPENAPI)


def test_document_has_routes():
    assert len(ROUTES) > 100
    assert len({(r.method, r.shape) for r in ROUTES}) == len(ROUTES)


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


async def test_the_gateway_serves_its_openapi_document_and_reference(anonymous):
    r = await anonymous.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == OPENAPI, "the served document is not docs/openapi.json"
    page = await anonymous.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text)
    assert {"/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} <= set(assets)
    assert "/openapi.json" in page.text and "http" not in page.text.replace("http-equiv", "")
    for asset in assets:
        a = await anonymous.get(asset)
        assert a.status_code == 200 and len(a.content) > 500, asset
    missing = await anonymous.get("/docs/..%2F..%2Fsecrets")
    assert missing.status_code == 404 and missing.json()["request_id"]
