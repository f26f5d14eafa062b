"""Webhooks against the real Postgres, Redis and an HTTP receiver on 127.0.0.1: an event published on a stream is
delivered signed (Standard Webhooks), a failed attempt is retried with the same event id, the log records both."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import grpc
import pytest
from aiohttp import web

from llmlab.analytics.v1 import webhook_service_pb2 as pb
from llmlab.analytics.v1 import webhook_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.context import PERMISSIONS_HEADER, PRINCIPAL_HEADER
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import EventPublisher

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
USER = (("x-llmlab-principal", "user:u1"), ("x-llmlab-permissions", "usage"))
assert (PRINCIPAL_HEADER, PERMISSIONS_HEADER) == ("x-llmlab-principal", "x-llmlab-permissions")


@pytest.fixture
async def receiver():
    """Answers 500 to the first delivery and 200 afterwards; keeps every request."""
    got: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=500 if len(got) == 1 else 200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/hook", got
    await runner.cleanup()


async def start_analytics(database_url: str, redis_url: str, schema: str, redis_prefix: str) -> ServiceApp:
    from services.analytics.app import SPEC

    settings = load_settings(SPEC.settings_cls, "analytics", environ={}, port=0, database_url=database_url,
                             redis_url=redis_url, db_schema=schema, redis_prefix=redis_prefix,
                             shutdown_grace_seconds=1.0, webhook_allow_private=True, webhook_backoff_seconds=0.3)
    a = ServiceApp(SPEC, settings)
    await a.start()
    return a


@pytest.fixture
async def app(database_url, redis_url, schema, redis_prefix):
    a = await start_analytics(database_url, redis_url, schema, redis_prefix)
    yield a
    await a.stop()


def verify(headers: dict, body: bytes) -> bool:
    """An independent Standard Webhooks verifier: key = base64 after whsec_, HMAC-SHA256 of id.timestamp.body."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(hmac.compare_digest(s.removeprefix("v1,"), expected) for s in headers["webhook-signature"].split())


async def test_a_signed_delivery_and_its_retry(app, receiver):
    url, got = receiver
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.WebhookServiceStub(channel)
        created = await stub.CreateWebhook(pb.CreateWebhookRequest(
            url=url, events=["batch.completed"], secret=SECRET), metadata=USER)
        assert created.id.startswith("wh_") and SECRET not in str(created)
        listed = await stub.ListWebhooks(pb.ListWebhooksRequest(), metadata=USER)
        assert [w.id for w in listed.data] == [created.id]
        others = await stub.ListWebhooks(pb.ListWebhooksRequest(),
                                         metadata=(("x-llmlab-principal", "user:u2"),))
        assert list(others.data) == []

        pub = EventPublisher(app.redis, app.settings.redis_prefix)
        batch = {"id": "batch_1", "object": "batch", "status": "completed", "principal": "user:u1/key:k1"}
        await pub.publish("batches", "batch.completed", batch)
        await pub.publish("batches", "batch.failed", {**batch, "id": "batch_2"})  # not subscribed
        await pub.publish("batches", "batch.completed", {**batch, "principal": "user:u2"})  # another user's

        for _ in range(100):
            if len(got) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(got) == 2, got
        (h1, b1), (h2, b2) = got
        assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2
        assert verify(h1, b1) and verify(h2, b2)
        event = json.loads(b2)
        assert event["type"] == "batch.completed" and event["id"] == h1["webhook-id"]
        assert event["data"] == {"id": "batch_1", "object": "batch", "status": "completed"}

        for _ in range(30):
            log = await stub.ListWebhookDeliveries(pb.ListWebhookDeliveriesRequest(webhook_id=created.id),
                                                   metadata=USER)
            if log.data and log.data[0].status == "succeeded":
                break
            await asyncio.sleep(0.1)
        (d,) = log.data
        assert (d.status, d.attempts, d.last_status_code, d.event_id) == ("succeeded", 2, 200, h1["webhook-id"])
        await asyncio.sleep(0.5)
        assert len(got) == 2  # nothing delivered twice after the success

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetWebhook(pb.GetWebhookRequest(webhook_id=created.id),
                                  metadata=(("x-llmlab-principal", "user:u2"),))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        await stub.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=created.id), metadata=USER)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetWebhook(pb.GetWebhookRequest(webhook_id=created.id), metadata=USER)


@pytest.mark.parametrize("body", [
    {"url": "http://127.0.0.1/x", "events": ["batch.completed"], "secret": ""},
    {"url": "http://127.0.0.1/x", "events": ["payment.failed"], "secret": "s3cret"},
    {"url": "not a url", "events": ["batch.completed"], "secret": "s3cret"},
])
async def test_bad_webhooks_are_refused(app, body):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.WebhookServiceStub(channel).CreateWebhook(pb.CreateWebhookRequest(**body), metadata=USER)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_usage_limit_reached_is_emitted_once(database_url, redis_url, monkeypatch, schema, redis_prefix):
    """The quota comes from the real auth service (a free-tier user: 1,000,000 tokens a month)."""
    from services.auth.app import SPEC as AUTH
    from services.auth.credentials import Passwords
    from services.auth.repository import AuthRepository
    from tests.integration.conftest import start_app

    auth = await start_app(AUTH, database_url, redis_url, f"{schema}_auth", redis_prefix)
    monkeypatch.setenv("LLMLAB_AUTH_TARGET", f"127.0.0.1:{auth.port}")
    app = await start_analytics(database_url, redis_url, schema, redis_prefix)
    try:
        user = await AuthRepository(auth.db).create_user("quota-user", await Passwords().hash("x" * 16),
                                                          ["usage"], "free")
        got: list[bytes] = []

        async def hook(request: web.Request) -> web.Response:
            got.append(await request.read())
            return web.Response(status=200)

        web_app = web.Application()
        web_app.router.add_post("/hook", hook)
        runner = web.AppRunner(web_app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        meta = (("x-llmlab-principal", f"user:{user.id}"), ("x-llmlab-permissions", "usage"))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            await pb_grpc.WebhookServiceStub(channel).CreateWebhook(pb.CreateWebhookRequest(
                url=f"http://127.0.0.1:{port}/hook", events=["usage.limit.reached"], secret=SECRET), metadata=meta)
        pub = EventPublisher(app.redis, app.settings.redis_prefix)
        for tokens in (400_000, 700_000, 5_000):  # crosses 1,000,000 with the second; the third changes nothing
            await pub.publish("usage", "usage.recorded", {"principal": f"user:{user.id}/key:k1", "model": "m",
                                                          "prompt_tokens": tokens, "completion_tokens": 0})
        for _ in range(100):
            if got:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        assert len(got) == 1
        event = json.loads(got[0])
        assert event["type"] == "usage.limit.reached"
        assert event["data"]["limit"] == "tokens_per_month" and event["data"]["limit_value"] == 1_000_000
        assert event["data"]["current_value"] >= 1_000_000
        await runner.cleanup()
    finally:
        await app.stop()
        await auth.stop()
