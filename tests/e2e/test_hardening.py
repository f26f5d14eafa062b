"""Hostile input through the real gateway: NUL bytes, bad UTF-8, oversized headers and URLs, parser internals, and
what ordinary keys and every client may see (docs/hardening.md)."""

import httpx
import pytest

from .test_bad_input import assert_lab_error

INTERNAL = ("TYPE_", "googleapis", "llmlab.", "Root element", "oneof", "Could not resolve", "proto", "grpc")


def assert_family_error(r: httpx.Response, family: str, status: int) -> dict:
    """The family's documented error body with a non-empty request_id that matches the header; no internals."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    rid = r.headers.get("x-request-id", "")
    assert rid
    if family == "lab":
        assert body["success"] is False and body["error"]["statusCode"] == status
        assert body["meta"]["request_id"] == rid
        message = body["error"]["message"]
    elif family == "serving":
        assert set(body) == {"error", "request_id"} and set(body["error"]) == {"message", "type", "param", "code"}
        assert body["request_id"] == rid
        message = body["error"]["message"]
    elif family == "native":
        assert set(body) == {"error", "request_id"} and set(body["error"]) == {"code", "message", "details"}
        assert body["request_id"] == rid
        message = body["error"]["message"]
    else:  # research and ops
        assert isinstance(body["error"], str) and body["request_id"] == rid
        message = body["message"]
    assert message and not any(word.lower() in r.text.lower() for word in INTERNAL), r.text
    return body


@pytest.mark.parametrize(
    ("path", "family"),
    [("/api/experiments?search=%00", "lab"), ("/api/experiments/history?search=a%00b", "lab"),
     ("/api/experiments?search=%FF", "lab"), ("/v1/models/%FF%FE", "serving")],
)
async def test_nul_and_bad_utf8_in_the_query_or_path_are_400(http, path, family):
    assert_family_error(await http.get(path), family, 400)


async def test_nul_in_a_json_string_is_400_naming_the_field_and_nothing_is_stored(http, db):
    before = await db.fetchval("SELECT count(*) FROM experiments")
    body = b'{"name": "a\\u0000b", "model": "smollm2-135m-instruct", "prompt": "p"}'
    r = await http.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    err = assert_lab_error(r, 400, "VALIDATION_ERROR")
    assert err["details"] == {"field": "name", "value": None, "constraint": "must not contain NUL characters"}
    r = await http.post("/v1/auth/api-keys", content=b'{"name": "k\\u0000"}',
                        headers={"content-type": "application/json"})
    assert assert_family_error(r, "serving", 400)["error"]["param"] == "name"
    assert await db.fetchval("SELECT count(*) FROM experiments") == before


@pytest.mark.parametrize(("path", "family"), [("/%00", "research"), ("/api/x%00", "lab"), ("/v1/%00", "serving"),
                                              ("/api/v1/%00", "native"), ("/health/%00", "ops")])
async def test_a_path_envoy_cannot_normalise_gets_the_family_shape_and_a_request_id(http, path, family):
    assert_family_error(await http.get(path), family, 400)


@pytest.mark.parametrize(("path", "family"), [("/api/experiments", "lab"), ("/v1/models", "serving"),
                                              ("/models", "research"), ("/api/v1/models", "native")])
async def test_oversized_headers_are_431_and_oversized_urls_414_never_429(http, path, family):
    big = {"x-padding": "a" * 16 * 1024}
    body = assert_family_error(await http.get(path, headers=big), family, 431)
    assert "16384" in str(body)
    assert_family_error(await http.get(f"{path}?search={'q' * 10_000}"), family, 414)
    # Just under the limits the request is served, whatever ext_authz adds to its headers.
    ok = await http.get(path, headers={"x-padding": "a" * 15 * 1024})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("body", "field", "constraint"),
    [(b'{"name": 5}', "name", "must be a string"),
     (b'{"name": "x", "parameters": {"temperature": "hot"}}', "parameters.temperature", "must be a number"),
     (b'{"name": "x", "parameters": "warm"}', "parameters", "must be an object"),
     (b'[1, 2]', "body", "must be a JSON object"),
     (b'{"tags": {"a": 1}}', "tags", "must be a plain value")],
)
async def test_parser_refusals_name_the_field_and_constraint_without_internals(http, body, field, constraint):
    r = await http.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    err = assert_family_error(r, "lab", 400)["error"]
    assert err["details"]["field"] == field and err["details"]["constraint"] == constraint


async def test_other_parser_refusals_are_worded_for_people(http):
    r = await http.get("/api/experiments", params={"page": "abc"})
    details = assert_family_error(r, "lab", 400)["error"]["details"]
    assert details["field"] == "page" and details["constraint"].startswith("must be an integer")
    r = await http.post("/api/experiments", content=b'{"name": "x", ', headers={"content-type": "application/json"})
    assert assert_family_error(r, "lab", 400)["error"]["message"].startswith("Malformed JSON")
    r = await http.get("/etc/passwd")
    assert assert_family_error(r, "research", 404)["message"] == "No endpoint for this method and path"
    r = await http.get("/models", params=[("limit", "1"), ("limit", "2")])
    details = assert_family_error(r, "research", 400)["details"]
    assert details == {"fields": {"limit": "must be given once"}}  # the research shape (docs/research.md "Errors")


async def test_success_responses_carry_no_internal_headers(http):
    for path in ("/api/experiments", "/v1/models", "/models", "/health"):
        r = await http.get(path)
        assert r.status_code == 200
        leaked = {h for h in r.headers if h.startswith(("grpc-", "x-envoy-"))}
        assert not leaked, (path, leaked)


async def test_detailed_health_shows_internals_to_admins_only(http):
    admin = (await http.get("/health/detailed")).json()
    assert set(admin["services"]) >= {"auth", "inference"} and admin["services"]["auth"]["target"]
    r = await http.post("/v1/auth/api-keys", json={"name": "reader", "permissions": ["models.read"]})
    assert r.status_code == 200, r.text
    reader = {"authorization": f"Bearer {r.json()['api_key']}"}
    r = await http.get("/health/detailed", headers=reader)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] in ("healthy", "degraded", "unhealthy")
    assert not body.get("services") and not body.get("dependencies"), body


async def test_public_metrics_name_no_internal_rpc(http, anonymous):
    assert (await anonymous.get("/health")).status_code == 200  # asks inference over an internal RPC
    text = (await anonymous.get("/metrics")).text
    assert 'path="/api/experiments' in text or "http_requests_total" in text
    assert "/llmlab." not in text


@pytest.mark.parametrize(("path", "family"), [("/api/experiments", "lab"), ("/experiments", "research"),
                                              ("/api/v1/generate", "native"), ("/v1/chat/completions", "serving")])
async def test_a_thousand_levels_of_nesting_is_400_in_every_family(http, path, family):
    body = '{"model": "m", "name": "x", "prompt": "p", "messages": ' + "[" * 1000 + "]" * 1000 + "}"
    r = await http.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert_family_error(r, family, 400)
