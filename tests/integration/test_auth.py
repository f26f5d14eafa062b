"""The auth service on port 0 against the real Postgres and Redis: logins, rotation, keys, and the gateway's
Check / ShouldRateLimit answered by two replicas at once (revocation and limits hold across them)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.auth.v3 import attribute_context_pb2 as attrs
from envoy.service.auth.v3 import external_auth_pb2 as ea
from envoy.service.auth.v3 import external_auth_pb2_grpc as ea_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.protobuf import json_format, struct_pb2
from google.rpc import code_pb2
from grpc_status import rpc_status

from llmlab.auth.v1 import auth_service_pb2 as pb
from llmlab.auth.v1 import auth_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import EventPublisher
from services.auth.app import SPEC
from services.auth.credentials import Passwords
from services.auth.repository import AuthRepository

PASSWORD = "correct horse battery staple"


class Replica:
    """One running auth service and stubs for its three gRPC services."""

    def __init__(self, app: ServiceApp) -> None:
        self.app = app
        self.closed = False
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.auth = pb_grpc.AuthServiceStub(self.channel)
        self.authz = ea_grpc.AuthorizationStub(self.channel)
        self.rls = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    async def check(self, path: str, credential: str = "", method: str = "GET") -> ea.CheckResponse:
        headers = {"authorization": f"Bearer {credential}"} if credential else {}
        http = attrs.AttributeContext.HttpRequest(method=method, path=path, headers=headers)
        return await self.authz.Check(ea.CheckRequest(
            attributes=attrs.AttributeContext(request=attrs.AttributeContext.Request(http=http))))

    async def admitted(self, ok: ea.CheckResponse, family: str = "serving") -> rls_pb2.RateLimitResponse:
        """ShouldRateLimit with the descriptor Envoy builds from the Check answer's headers."""
        headers = {h.header.key: h.header.value for h in ok.ok_response.headers}
        entries = [("family", family), ("path", "/llmlab.inference.v1.OpenAIService/ListOpenAIModels"),
                   ("principal", headers["x-llmlab-principal"])]
        if "x-llmlab-limits" in headers:
            entries.append(("limits", headers["x-llmlab-limits"]))
        descriptor = ratelimit_pb2.RateLimitDescriptor(
            entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
        return await self.rls.ShouldRateLimit(rls_pb2.RateLimitRequest(domain="llmlab", descriptors=[descriptor]))

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            await self.channel.close()
            await self.app.stop(0.5)


def as_caller(ok: ea.CheckResponse) -> tuple[tuple[str, str], ...]:
    """The metadata a service gets behind the gateway: the Check answer's x-llmlab-* headers."""
    return tuple((h.header.key, h.header.value) for h in ok.ok_response.headers
                 if h.header.key in ("x-llmlab-principal", "x-llmlab-permissions"))


@pytest.fixture
async def start(database_url, redis_url, schema, redis_prefix) -> AsyncIterator:
    """Start auth replicas in this test's schema and Redis prefix; all are stopped afterwards."""
    started: list[Replica] = []

    async def factory(**overrides) -> Replica:
        settings = load_settings(
            SPEC.settings_cls, "auth", environ={}, port=0, database_url=database_url, redis_url=redis_url,
            db_schema=schema, redis_prefix=redis_prefix, shutdown_grace_seconds=0.5,
            **{"admin_password": PASSWORD, **overrides},
        )
        app = ServiceApp(SPEC, settings)
        await app.start()
        started.append(Replica(app))
        return started[-1]

    yield factory
    for replica in started:
        await replica.close()


@pytest.fixture
async def replicas(start) -> tuple[Replica, Replica]:
    """Two replicas of the auth service sharing one schema and one Redis prefix."""
    return await start(), await start()


async def admin_token(r: Replica) -> str:
    return (await r.auth.CreateToken(pb.CreateTokenRequest(username="admin", password=PASSWORD))).access_token


async def admin_metadata(r: Replica) -> tuple[tuple[str, str], ...]:
    ok = await r.check("/v1/auth/api-keys", await admin_token(r), "POST")
    return as_caller(ok)


async def test_first_admin_comes_from_the_settings_once(start):
    first = await start()
    assert await admin_token(first)
    await first.close()
    again = await start(admin_password="a different password")  # a later start never changes the admin
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await again.auth.CreateToken(pb.CreateTokenRequest(username="admin", password="a different password"))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await admin_token(again)
    await again.close()


async def test_no_password_no_admin(start):
    replica = await start(admin_password="", admin_username="root")
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await replica.auth.CreateToken(pb.CreateTokenRequest(username="root", password=""))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await replica.close()


async def test_concurrent_refresh_of_one_token_revokes_the_family(replicas):
    a, b = replicas
    pair = await a.auth.CreateToken(pb.CreateTokenRequest(username="admin", password=PASSWORD))
    results = await asyncio.gather(
        a.auth.RefreshToken(pb.RefreshTokenRequest(refresh_token=pair.refresh_token)),
        b.auth.RefreshToken(pb.RefreshTokenRequest(refresh_token=pair.refresh_token)),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, pb.RefreshTokenResponse)]
    lost = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(won) == 1 and len(lost) == 1 and lost[0].code() == grpc.StatusCode.UNAUTHENTICATED
    # The winner's pair belonged to the family the reuse revoked: both of its tokens are dead too.
    with pytest.raises(grpc.aio.AioRpcError):
        await a.auth.RefreshToken(pb.RefreshTokenRequest(refresh_token=won[0].refresh_token))
    assert (await b.check("/api/experiments", won[0].access_token)).status.code == code_pb2.UNAUTHENTICATED
    assert (await b.check("/api/experiments", pair.access_token)).status.code == code_pb2.UNAUTHENTICATED


async def test_revocation_is_immediate_on_every_replica(replicas):
    a, b = replicas
    md = await admin_metadata(a)
    key = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(name="k", permissions=["models.read"]), metadata=md)
    for replica in (a, b):  # both have seen (and cached) the key
        assert (await replica.check("/v1/models", key.api_key)).status.code == code_pb2.OK
    await a.auth.DeleteApiKey(pb.DeleteApiKeyRequest(key_id=key.id), metadata=md)
    denied = await b.check("/v1/models", key.api_key)
    assert denied.status.code == code_pb2.UNAUTHENTICATED and denied.denied_response.status.code == 401
    principal = (await b.auth.GetPrincipal(pb.GetPrincipalRequest(key_id=key.id))).principal
    assert principal.active is False and principal.kind == pb.PRINCIPAL_KIND_API_KEY


async def test_exact_limit_across_two_replicas_under_64_concurrent_requests(replicas):
    a, b = replicas
    md = await admin_metadata(a)
    key = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(
        name="k", permissions=["models.read"], rate_limit=pb.RateLimit(requests_per_minute=20)), metadata=md)
    ok = await a.check("/v1/models", key.api_key)
    answers = await asyncio.gather(*(r.admitted(ok) for r in [a, b] * 32))
    codes = [x.overall_code for x in answers]
    assert codes.count(rls_pb2.RateLimitResponse.OK) == 20
    assert codes.count(rls_pb2.RateLimitResponse.OVER_LIMIT) == 44
    refused = next(x for x in answers if x.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT)
    headers = {h.key: h.value for h in refused.response_headers_to_add}
    assert headers["x-ratelimit-remaining-requests"] == "0" and 1 <= int(headers["retry-after"]) <= 60
    assert b"RATE_LIMIT_EXCEEDED" in refused.raw_body


async def test_free_tier_burst_then_requests_per_minute(replicas):
    a, _ = replicas
    auth_repo = AuthRepository(a.app.db)
    user = f"free-{uuid.uuid4().hex[:6]}"
    await auth_repo.create_user(user, await Passwords().hash(PASSWORD), ["models.read"], "free")
    token = (await a.auth.CreateToken(pb.CreateTokenRequest(username=user, password=PASSWORD))).access_token
    ok = await a.check("/v1/models", token)
    limits = {h.header.value for h in ok.ok_response.headers if h.header.key == "x-llmlab-limits"}.pop()
    assert "user_burst=10" in limits and "user_requests_per_minute=20" in limits
    assert "user_requests_per_hour=100" in limits and "user_tokens_per_minute=40000" in limits

    async def wave(n: int) -> int:
        answers = await asyncio.gather(*(a.admitted(ok) for _ in range(n)))
        return sum(x.overall_code == rls_pb2.RateLimitResponse.OK for x in answers)

    assert await wave(15) == 10  # Free: burst 10 (docs/auth.md)
    await asyncio.sleep(1.1)
    assert await wave(15) == 10  # Free: 20 per minute (docs/auth.md)
    await asyncio.sleep(1.1)
    assert await wave(5) == 0
    refused = await a.admitted(ok, family="research")
    assert b"20 requests per minute for this account" in refused.raw_body


async def test_usage_events_feed_the_token_limit_once_per_request(replicas):
    a, _ = replicas
    md = await admin_metadata(a)
    key = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(
        name="k", permissions=["inference"], rate_limit=pb.RateLimit(tokens_per_minute=1000)), metadata=md)
    ok = await a.check("/v1/chat/completions", key.api_key, "POST")
    principal = {h.header.key: h.header.value for h in ok.ok_response.headers}["x-llmlab-principal"]
    events = EventPublisher(a.app.redis, a.app.settings.redis_prefix)

    async def publish(request_id: str, tokens: int) -> None:
        await events.publish("usage", "usage.recorded", {"request_id": request_id, "principal": principal,
                                                         "total_tokens": tokens})

    async def remaining_tokens() -> str:
        answer = await a.admitted(ok)
        return {h.key: h.value for h in answer.response_headers_to_add}["x-ratelimit-remaining-tokens"]

    await publish("req-1", 600)
    await publish("req-1", 600)  # delivered twice: counted once
    for _ in range(50):
        if await remaining_tokens() == "400":
            break
        await asyncio.sleep(0.1)
    assert await remaining_tokens() == "400"
    await publish("req-2", 500)
    for _ in range(50):
        answer = await a.admitted(ok)
        if answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT:
            break
        await asyncio.sleep(0.1)
    assert answer.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert b"1000 tokens per minute for this API key" in answer.raw_body


async def test_record_usage_and_get_principal(replicas):
    a, _ = replicas
    md = await admin_metadata(a)
    key = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(name="k", permissions=["inference", "models.read"]),
                                    metadata=md)
    principal = (await a.auth.GetPrincipal(pb.GetPrincipalRequest(key_id=key.id))).principal
    assert principal.kind == pb.PRINCIPAL_KIND_API_KEY and principal.active
    assert list(principal.permissions) == ["inference", "models.read"] and principal.tier == "enterprise"
    request = pb.RecordUsageRequest(key_id=key.id, model="m", prompt_tokens=30, completion_tokens=12,
                                    request_id="req-x")
    first = await a.auth.RecordUsage(request)
    assert first.recorded and first.tokens_per_minute.used == 42 and first.tokens_per_month.used == 42
    assert first.tokens_per_minute.limit == 0 and not first.tokens_per_month.exhausted  # enterprise: unlimited
    again = await a.auth.RecordUsage(request)
    assert not again.recorded and again.tokens_per_minute.used == 42
    user = (await a.auth.GetPrincipal(pb.GetPrincipalRequest(user_id=principal.user_id))).principal
    assert user.kind == pb.PRINCIPAL_KIND_USER and user.username == "admin" and list(user.permissions) == ["admin"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.auth.GetPrincipal(pb.GetPrincipalRequest(key_id="key_nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_login_attempts_are_limited_exactly_and_lock_the_right_password_too(replicas):
    a, b = replicas
    md = (("x-forwarded-for", "203.0.113.7"),)
    attempts = await asyncio.gather(
        *(r.auth.CreateToken(pb.CreateTokenRequest(username="admin", password=f"guess {i}"), metadata=md)
          for i, r in enumerate([a, b] * 10)),
        return_exceptions=True,
    )
    codes = [e.code() for e in attempts]
    assert codes.count(grpc.StatusCode.UNAUTHENTICATED) == 5
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 15
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.auth.CreateToken(pb.CreateTokenRequest(username="admin", password=PASSWORD), metadata=md)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_keys_only_for_authenticated_callers(replicas):
    a, _ = replicas
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await a.auth.ListApiKeys(pb.ListApiKeysRequest())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def violation(err: grpc.aio.AioRpcError) -> dict:
    """The validation_error details {field, value, constraint} of an INVALID_ARGUMENT answer."""
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    for detail in rpc_status.from_call(err).details:
        if detail.Is(struct_pb2.Struct.DESCRIPTOR):
            details = struct_pb2.Struct()
            detail.Unpack(details)
            return json_format.MessageToDict(details)
    raise AssertionError("no details")


async def test_a_key_minted_by_a_key_stays_within_it(replicas):
    """docs/auth.md "API keys": permissions, limits, monthly quota and expiry at most the minting key's."""
    a, b = replicas
    md = await admin_metadata(a)
    expires = (dt.datetime.now(dt.UTC) + dt.timedelta(days=10)).replace(microsecond=0)
    manager = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(
        name="manager", permissions=["keys", "models.read"],
        rate_limit=pb.RateLimit(requests_per_minute=20, tokens_per_minute=1000),
        expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ")), metadata=md)
    await a.app.db.execute("UPDATE api_keys SET tokens_per_month = 5000 WHERE id = $1", manager.id)
    as_manager = as_caller(await b.check("/v1/auth/api-keys", manager.api_key, "POST"))

    child = await b.auth.CreateApiKey(pb.CreateApiKeyRequest(name="child"), metadata=as_manager)
    assert list(child.permissions) == ["keys", "models.read"]
    assert (child.rate_limit.requests_per_minute, child.rate_limit.tokens_per_minute) == (20, 1000)
    assert child.expires_at.string_value == expires.strftime("%Y-%m-%dT%H:%M:%SZ")
    seen = (await a.auth.GetPrincipal(pb.GetPrincipalRequest(key_id=child.id))).principal
    assert seen.tokens_per_month == 5000 and seen.rate_limit.requests_per_minute == 20

    for request, field in [
        (pb.CreateApiKeyRequest(name="c", rate_limit=pb.RateLimit(requests_per_minute=21)),
         "rate_limit.requests_per_minute"),
        (pb.CreateApiKeyRequest(name="c", rate_limit=pb.RateLimit(tokens_per_minute=100000)),
         "rate_limit.tokens_per_minute"),
        (pb.CreateApiKeyRequest(name="c", expires_at="2099-01-01T00:00:00Z"), "expires_at"),
        (pb.CreateApiKeyRequest(), "name"),
        (pb.CreateApiKeyRequest(name="\u200b\u200b"), "name"),
        (pb.CreateApiKeyRequest(name="c", expires_at="9" * 60_000), "expires_at"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.auth.CreateApiKey(request, metadata=as_manager)
        details = violation(err.value)
        assert details["field"] == field and len(str(details["value"])) < 100
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.auth.CreateApiKey(pb.CreateApiKeyRequest(name="c", permissions=["inference"]), metadata=as_manager)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    listed = (await a.auth.ListApiKeys(pb.ListApiKeysRequest(), metadata=md)).data
    assert sorted(k.name for k in listed) == ["child", "manager"]  # nothing refused was stored

    # The admin signed in with a JWT keeps today's abilities: an unlimited key that never expires.
    admin_key = await a.auth.CreateApiKey(pb.CreateApiKeyRequest(name="  unlimited  "), metadata=md)
    assert admin_key.name == "unlimited" and admin_key.expires_at.WhichOneof("kind") == "null_value"
    assert (admin_key.rate_limit.requests_per_minute, admin_key.rate_limit.tokens_per_minute) == (0, 0)
