"""Auth through the real Envoy: JWT tokens with rotation, API keys, ext_authz, exact rate limits,
token limits fed by streamed usage, monthly quotas."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid

import asyncpg
import httpx
import openai
import pytest

from ..conftest import delete_keys
from .conftest import login

MODEL = "smollm2-135m-instruct"


async def new_key(http: httpx.AsyncClient, **body) -> dict:
    r = await http.post("/v1/auth/api-keys", json={"name": f"test {uuid.uuid4().hex[:6]}", **body})
    assert r.status_code == 200, r.text
    return r.json()


def bearer(key: dict | str) -> dict[str, str]:
    return {"authorization": f"Bearer {key['api_key'] if isinstance(key, dict) else key}"}


async def test_token_pair_is_seed_001_shape_and_works(anonymous, platform):
    tokens = await login(platform)
    assert set(tokens) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] == 3600
    assert tokens["access_token"].startswith("eyJ") and tokens["refresh_token"] != tokens["access_token"]
    r = await anonymous.get("/api/experiments", headers=bearer(tokens["access_token"]))
    assert r.status_code == 200


async def test_refresh_rotates_and_reuse_revokes_the_family(anonymous, platform):
    first = await login(platform)
    r = await anonymous.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert r.status_code == 200, r.text
    second = r.json()
    assert set(second) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert second["refresh_token"] != first["refresh_token"]
    assert (await anonymous.get("/api/experiments", headers=bearer(second["access_token"]))).status_code == 200

    # The spent token presented again: refused, and the whole family dies — its newest pair included.
    reuse = await anonymous.post("/auth/refresh", json={"refresh_token": first["refresh_token"]})
    assert reuse.status_code == 401 and reuse.json()["error"] == "unauthorized"
    assert reuse.json()["request_id"] == reuse.headers["x-request-id"]
    assert (await anonymous.post("/auth/refresh", json={"refresh_token": second["refresh_token"]})).status_code == 401
    r = await anonymous.get("/api/experiments", headers=bearer(second["access_token"]))
    assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    # Another login is another family, untouched.
    assert (await anonymous.get("/api/experiments", headers=bearer((await login(platform))["access_token"]))
            ).status_code == 200


async def test_bad_password_is_401_and_brute_force_is_limited(anonymous):
    user = f"victim-{uuid.uuid4().hex[:8]}"
    statuses = []
    for _ in range(7):
        r = await anonymous.post("/auth/token", json={"username": user, "password": "guess-" + uuid.uuid4().hex})
        statuses.append(r.status_code)
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429]
    body = r.json()
    assert body["error"] == "rate_limit_exceeded" and body["retry_after"] > 0
    assert int(r.headers["retry-after"]) == body["retry_after"] and body["request_id"]
    assert {"limit", "remaining", "reset_at"} <= set(body)


async def test_api_keys_seed_003_shape_headers_permissions_and_revocation(http, anonymous):
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    created = await new_key(http, name="My Application Key", permissions=["inference", "models.read"],
                            rate_limit={"requests_per_minute": 1000, "tokens_per_minute": 100000}, expires_at=expires)
    assert set(created) == {"id", "name", "api_key", "permissions", "rate_limit", "created_at", "expires_at"}
    assert created["id"].startswith("key_") and created["api_key"].startswith("sk-") and len(created["api_key"]) > 40
    assert created["permissions"] == ["inference", "models.read"] and created["expires_at"] == expires
    assert created["rate_limit"] == {"requests_per_minute": 1000, "tokens_per_minute": 100000}

    listed = (await http.get("/v1/auth/api-keys")).json()
    assert listed["object"] == "list"
    mine = next(k for k in listed["data"] if k["id"] == created["id"])
    assert "api_key" not in mine and created["api_key"] not in str(listed)

    # Both ways of presenting it (Bearer, X-API-Key; docs/auth.md).
    assert (await anonymous.get("/v1/models", headers=bearer(created))).status_code == 200
    assert (await anonymous.get("/v1/models", headers={"x-api-key": created["api_key"]})).status_code == 200
    # A permission it lacks: 403 naming it, in each family's shape.
    r = await anonymous.post("/experiments", json={"name": "x"}, headers=bearer(created))
    assert r.status_code == 403 and r.json()["error"] == "forbidden"
    assert r.json()["required_permission"] == "experiments:write"
    r = await anonymous.get("/api/experiments", headers=bearer(created))
    assert r.status_code == 403 and r.json()["error"]["details"] == {"required_permission": "experiments:read"}
    # It cannot mint keys (no `keys` permission), nor grant more than it holds through a key that has `keys`.
    assert (await anonymous.post("/v1/auth/api-keys", json={}, headers=bearer(created))).status_code == 403
    manager = await new_key(http, permissions=["keys", "models.read"])
    r = await anonymous.post("/v1/auth/api-keys", json={"name": "escalation", "permissions": ["inference"]},
                             headers=bearer(manager))
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"

    r = await http.delete(f"/v1/auth/api-keys/{created['id']}")
    assert r.status_code == 200 and r.json() == {"id": created["id"], "deleted": True}
    r = await anonymous.get("/v1/models", headers=bearer(created))
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert created["id"] not in [k["id"] for k in (await http.get("/v1/auth/api-keys")).json()["data"]]
    assert (await http.delete(f"/v1/auth/api-keys/{created['id']}")).status_code == 404


async def test_bad_key_requests(http):
    r = await http.post("/v1/auth/api-keys", json={"name": "k", "permissions": ["root"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "permissions"
    r = await http.post("/v1/auth/api-keys", json={"name": "k", "expires_at": "2001-01-01T00:00:00Z"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "expires_at"
    r = await http.post("/v1/auth/api-keys", json={"name": "k", "rate_limit": {"requests_per_minute": 0}})
    assert r.status_code == 400 and r.json()["error"]["param"] == "rate_limit.requests_per_minute"


def assert_serving_400(r: httpx.Response, param: str) -> str:
    """The OpenAI family's 400: the param named, the constraint in the message, a request id."""
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "request_id"} and body["request_id"] == r.headers["x-request-id"] != ""
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "validation_error"
    assert body["error"]["param"] == param and body["error"]["message"].startswith(f"`{param}` ")
    return body["error"]["message"]


@pytest.mark.parametrize(("body", "param"), [({}, "name"), ({"name": "   "}, "name"),
                                               ({"name": "\u200b\u200b"}, "name"), ({"name": "n" * 256}, "name")])
async def test_a_key_needs_a_visible_name(http, body, param):
    before = {k["id"] for k in (await http.get("/v1/auth/api-keys")).json()["data"]}
    assert_serving_400(await http.post("/v1/auth/api-keys", json=body), param)
    assert {k["id"] for k in (await http.get("/v1/auth/api-keys")).json()["data"]} == before


async def test_expires_at_that_is_not_a_timestamp_is_400_quickly_and_not_quoted(http):
    assert "RFC 3339" in assert_serving_400(
        await http.post("/v1/auth/api-keys", json={"name": "k", "expires_at": "next tuesday"}), "expires_at")
    started = time.monotonic()
    r, *others = await asyncio.gather(
        http.post("/v1/auth/api-keys", json={"name": "k", "expires_at": "2030-12-31T23:59:59Z" + "9" * 60_000}),
        *(http.get("/v1/auth/api-keys") for _ in range(8)),
    )
    assert_serving_400(r, "expires_at")
    assert len(r.content) < 600 and time.monotonic() - started < 5
    assert all(o.status_code == 200 for o in others)


async def test_a_key_mints_keys_only_within_its_own_limits_and_expiry(http, anonymous, platform):
    """docs/auth.md "API keys": a limited key cannot mint unlimited (0/0), higher or longer-lived keys."""
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manager = await new_key(http, permissions=["keys", "models.read"], expires_at=expires,
                            rate_limit={"requests_per_minute": 30, "tokens_per_minute": 5000})
    as_manager = bearer(manager)

    r = await anonymous.post("/v1/auth/api-keys", json={"name": "child"}, headers=as_manager)
    assert r.status_code == 200, r.text
    child = r.json()
    assert child["rate_limit"] == {"requests_per_minute": 30, "tokens_per_minute": 5000}
    assert child["expires_at"] == expires and child["permissions"] == ["keys", "models.read"]
    ok = await anonymous.get("/v1/models", headers=bearer(child))
    assert ok.status_code == 200 and ok.headers["x-ratelimit-limit-requests"] == "30"

    for body, param, says in [
        ({"rate_limit": {"requests_per_minute": 31}}, "rate_limit.requests_per_minute", "at most 30"),
        ({"rate_limit": {"tokens_per_minute": 100000}}, "rate_limit.tokens_per_minute", "at most 5000"),
        ({"expires_at": "2099-01-01T00:00:00Z"}, "expires_at", f"not be later than {expires}"),
    ]:
        r = await anonymous.post("/v1/auth/api-keys", json={"name": "greedy", **body}, headers=as_manager)
        assert says in assert_serving_400(r, param)
    names = [k["name"] for k in (await anonymous.get("/v1/auth/api-keys", headers=as_manager)).json()["data"]]
    assert "greedy" not in names and "child" in names

    # The admin's session key is unlimited and never expires: what it mints may be too (and a JWT admin's).
    r = await http.post("/v1/auth/api-keys", json={"name": "unlimited"})
    assert r.json()["rate_limit"] == {"requests_per_minute": 0, "tokens_per_minute": 0}
    tokens = await login(platform)
    r = await anonymous.post("/v1/auth/api-keys", json={"name": "by jwt", "rate_limit": {"requests_per_minute": 999}},
                             headers=bearer(tokens["access_token"]))
    assert r.status_code == 200 and r.json()["rate_limit"]["requests_per_minute"] == 999


async def test_keys_are_stored_hashed(http, platform):
    created = await new_key(http, permissions=["models.read"])
    conn = await asyncpg.connect(platform.database_url)
    try:
        rows = await conn.fetch(f"SELECT * FROM {platform.schema('auth')}.api_keys")
    finally:
        await conn.close()
    assert created["id"] in [r["id"] for r in rows]
    dump = repr([dict(r) for r in rows])
    assert created["api_key"] not in dump and created["api_key"][3:] not in dump


async def test_client_cannot_forge_the_principal(http, anonymous):
    forged = {"x-llmlab-principal": "user:00000000-0000-0000-0000-000000000000", "x-llmlab-permissions": "admin"}
    assert (await anonymous.get("/api/experiments", headers=forged)).status_code == 401
    limited = await new_key(http, permissions=["models.read"])
    r = await anonymous.get("/api/experiments", headers={**forged, **bearer(limited)})
    assert r.status_code == 403


async def test_64_parallel_clients_never_get_past_the_limit(http, anonymous):
    key = await new_key(http, permissions=["models.read"], rate_limit={"requests_per_minute": 20})
    results = await asyncio.gather(*(anonymous.get("/v1/models", headers=bearer(key)) for _ in range(64)))
    ok = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 429]
    assert len(ok) == 20 and len(refused) == 44, sorted(r.status_code for r in results)
    for r in ok:
        assert r.headers["x-ratelimit-limit-requests"] == "20" and r.headers["x-ratelimit-limit"] == "20"
        assert 0 <= int(r.headers["x-ratelimit-remaining-requests"]) < 20
        assert int(r.headers["x-ratelimit-reset"]) >= int(time.time())
    assert sorted(int(r.headers["x-ratelimit-remaining"]) for r in ok) == list(range(20))
    err = refused[0].json()
    assert err["error"]["type"] == "rate_limit_error" and err["error"]["code"] == "rate_limit_exceeded"
    assert err["request_id"] == refused[0].headers["x-request-id"]
    assert 1 <= int(refused[0].headers["retry-after"]) <= 60
    assert refused[0].headers["x-ratelimit-remaining-requests"] == "0"


async def test_429_in_each_family_shape(http, anonymous):
    key = await new_key(http, permissions=["models.read", "experiments:read"], rate_limit={"requests_per_minute": 2})
    for path in ("/models", "/api/experiments"):
        assert (await anonymous.get(path, headers=bearer(key))).status_code in (200, 501)
    research = await anonymous.get("/models", headers=bearer(key))
    assert research.status_code == 429
    body = research.json()
    assert body["error"] == "rate_limit_exceeded" and body["message"].startswith("Rate limit exceeded")
    assert body["limit"] == 2 and body["remaining"] == 0 and 1 <= body["retry_after"] <= 60
    assert dt.datetime.strptime(body["reset_at"], "%Y-%m-%dT%H:%M:%SZ") and body["request_id"]
    assert research.headers["retry-after"] == str(body["retry_after"])
    assert research.headers["x-ratelimit-limit"] == "2" and "x-ratelimit-limit-requests" not in research.headers
    lab = await anonymous.get("/api/experiments", headers=bearer(key))
    assert lab.status_code == 429 and lab.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert lab.json()["error"]["details"]["retry_after"] >= 1
    native = await anonymous.get("/api/v1/models", headers=bearer(key))
    assert native.status_code == 429 and native.json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"


async def fresh_minute() -> None:
    """Token counters are per calendar minute: start a test that reads them back early in a minute."""
    if time.time() % 60 > 40:
        await asyncio.sleep(60 - time.time() % 60 + 0.5)


async def stream_tokens(platform, key: dict) -> int:
    """A streamed chat completion with the key; its total tokens as the final usage chunk reports them."""
    client = openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=key["api_key"], max_retries=0)
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=12, temperature=0,
        stream=True, stream_options={"include_usage": True},
    )
    total = 0
    async for chunk in stream:
        if chunk.usage is not None:
            total = chunk.usage.total_tokens
    await client.close()
    assert total > 0
    return total


async def until(check, seconds: float = 15.0):
    deadline = time.monotonic() + seconds
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.2)


async def test_streamed_tokens_count_against_tokens_per_minute(http, anonymous, platform):
    await fresh_minute()
    key = await new_key(http, permissions=["inference", "models.read"], rate_limit={"tokens_per_minute": 100000})
    first = await anonymous.get("/v1/models", headers=bearer(key))
    assert first.headers["x-ratelimit-limit-tokens"] == "100000"
    assert first.headers["x-ratelimit-remaining-tokens"] == "100000"
    total = await stream_tokens(platform, key)

    async def remaining() -> bool:
        r = await anonymous.get("/v1/models", headers=bearer(key))
        return r.headers["x-ratelimit-remaining-tokens"] == str(100000 - total)

    assert await until(remaining), "the streamed request's tokens were not counted exactly"

    # A key whose minute budget is smaller than one answer: the next request is refused until the minute ends.
    small = await new_key(http, permissions=["inference", "models.read"], rate_limit={"tokens_per_minute": 5})
    await stream_tokens(platform, small)

    async def refused() -> httpx.Response | None:
        r = await anonymous.get("/v1/models", headers=bearer(small))
        return r if r.status_code == 429 else None

    r = await until(refused)
    assert r is not None and r.json()["error"]["type"] == "rate_limit_error"
    assert "tokens per minute" in r.json()["error"]["message"]
    assert r.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_monthly_quota_is_quota_exceeded_error(http, anonymous, platform, redis_url):
    key = await new_key(http, permissions=["inference", "models.read"])
    # A monthly budget has no API of its own (tiers set it); give this key a tiny one and drop the cached entry.
    conn = await asyncpg.connect(platform.database_url)
    try:
        await conn.execute(f"UPDATE {platform.schema('auth')}.api_keys SET tokens_per_month = 20 WHERE id = $1",
                           key["id"])
    finally:
        await conn.close()
    await delete_keys(redis_url, f"{platform.schema_prefix}:auth:key")
    await stream_tokens(platform, key)

    async def refused() -> httpx.Response | None:
        r = await anonymous.get("/v1/models", headers=bearer(key))
        return r if r.status_code == 429 else None

    r = await until(refused)
    assert r is not None, "the monthly quota was never enforced"
    err = r.json()["error"]
    assert err["type"] == "quota_exceeded_error" and err["code"] == "quota_exceeded" and "monthly" in err["message"]
    assert int(r.headers["retry-after"]) > 0
    research = await anonymous.get("/models", headers=bearer(key))
    assert research.status_code == 429 and research.json()["error"] == "quota_exceeded"


async def test_usage_events_carry_the_key_principal(http, platform, redis_client):
    key = await new_key(http, permissions=["inference"])
    await stream_tokens(platform, key)
    stream = f"{platform.schema_prefix}:stream:usage"

    async def seen() -> bool:
        for _, fields in await redis_client.xrevrange(stream, count=20):
            if key["id"].encode() in fields[b"data"]:
                return True
        return False

    assert await until(seen)
    entries = await redis_client.xrevrange(stream, count=20)
    data = next(f[b"data"].decode() for _, f in entries if key["id"].encode() in f[b"data"])
    assert f"/key:{key['id']}" in data and key["api_key"] not in data


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_public_routes_ignore_credentials(anonymous, header):
    value = "Bearer nonsense" if header == "authorization" else "sk-nonsense"
    for path in ("/health", "/health/ready", "/metrics"):
        assert (await anonymous.get(path, headers={header: value})).status_code == 200
    assert (await anonymous.get("/health/detailed")).status_code == 401
