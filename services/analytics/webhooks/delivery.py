"""Webhook delivery: events fanned out into delivery rows, a scheduler that enqueues due rows on the
`webhook-deliveries` stream, workers that POST them signed and reschedule failures with exponential backoff, and the
usage.limit.reached check (docs/analytics.md "Webhooks")."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import time
from typing import Any

import asyncpg
import grpc
import httpx
import structlog

from llmlab.auth.v1 import auth_service_pb2 as apb
from llmlab.auth.v1 import auth_service_pb2_grpc as apb_grpc
from llmlab.runtime import InvalidArgument, ServiceApp
from llmlab.runtime.streams import EventPublisher, StreamConsumer, StreamMessage

from ..readmodel import at, parse_principal
from ..settings import AnalyticsSettings
from . import domain
from .repository import WebhookRepository, fan_out

log = structlog.get_logger(__name__)

QUEUE = "webhook-deliveries"
GROUP = "webhook-delivery"
SCHEDULE_SECONDS = 1.0
# A row enqueued this long ago and still pending lost its queue message (e.g. Redis restarted): enqueue it again.
REQUEUE_AFTER = dt.timedelta(minutes=5)
QUOTA_CACHE_SECONDS = 60.0


def owner(data: dict[str, Any]) -> str:
    """The user an event belongs to: its `principal` (user:<id>[/key:<id>]) or `user_id`."""
    return parse_principal(str(data.get("principal") or ""))[0] or str(data.get("user_id") or "")


async def fan_out_events(conn: asyncpg.Connection, stream: str, messages: list[StreamMessage]) -> None:
    """Inside the projector's transaction: each webhook event becomes its deliveries, with the batch's commit."""
    for m in messages:
        if m.type not in domain.EVENTS or m.type == "usage.limit.reached":
            continue
        user = owner(m.data)
        if not user:
            continue
        evt = domain.event_id(stream, m.id, m.type)
        data = {k: v for k, v in m.data.items() if k not in ("principal", "user_id")}
        await fan_out(conn, user, m.type, evt, domain.body(m.type, evt, int(m.published_at), data),
                      at(m.published_at))


class Deliverer:
    def __init__(self, app: ServiceApp, repo: WebhookRepository) -> None:
        s = app.settings
        assert isinstance(s, AnalyticsSettings) and app.redis is not None
        self._s = s
        self._repo = repo
        self._queue = EventPublisher(app.redis, s.redis_prefix)
        self._auth = apb_grpc.AuthServiceStub(app.channel("auth"))
        self._quotas: dict[str, tuple[float, int]] = {}
        self._client = httpx.AsyncClient(timeout=s.webhook_timeout_seconds, follow_redirects=False)
        self.consumer = StreamConsumer(app.redis, s.redis_prefix, QUEUE, GROUP,
                                       f"{socket.gethostname()}-{os.getpid()}", self.handle, batch=8,
                                       block_ms=500, claim_idle_ms=int(s.webhook_timeout_seconds * 3000))
        app.on_stop(self._client.aclose)

    async def schedule(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                for delivery_id in await self._repo.due(REQUEUE_AFTER):
                    await self._queue.publish(QUEUE, "webhook.delivery", {"delivery_id": delivery_id})
            except Exception:
                log.exception("webhook scheduler failed; retrying")
            try:
                await asyncio.wait_for(stop.wait(), SCHEDULE_SECONDS)
            except TimeoutError:
                pass

    async def handle(self, msg: StreamMessage) -> None:
        target = await self._repo.attempt_target(str(msg.data.get("delivery_id")))
        if target is None:
            return  # delivered, failed for good, cancelled, or the endpoint was deleted
        attempts = target["attempts"] + 1
        status: int | None = None
        try:
            await domain.check_url(target["url"], require_https=self._s.webhook_require_https,
                                   allow_private=self._s.webhook_allow_private)
            body = target["payload"].encode()
            ts = int(time.time())
            r = await self._client.post(target["url"], content=body, headers={
                "content-type": "application/json", "webhook-id": target["event_id"],
                "webhook-timestamp": str(ts), "webhook-signature": domain.sign(target["secret"], target["event_id"],
                                                                             ts, body)})
            status = r.status_code
            if 200 <= status < 300:
                await self._repo.succeeded(target["id"], status)
                return
            error = f"HTTP {status}"
        except InvalidArgument as exc:
            error = f"target refused: {exc.details.get('constraint', 'unsafe URL')}"
        except httpx.TimeoutException:
            error = "timeout"
        except httpx.HTTPError as exc:
            error = f"connection failed: {type(exc).__name__}"
        retry_in = domain.backoff(attempts, self._s.webhook_backoff_seconds)
        log.info("webhook attempt failed", delivery_id=target["id"], attempts=attempts, error=error,
                 retry_in=retry_in)
        await self._repo.failed(target["id"], status, error, self._s.webhook_max_attempts, retry_in)

    async def _quota(self, user: str) -> int:
        cached = self._quotas.get(user)
        if cached and cached[0] > time.monotonic():
            return cached[1]
        try:
            found = await self._auth.GetPrincipal(apb.GetPrincipalRequest(user_id=user), timeout=5.0)
            quota = int(found.principal.tokens_per_month)
        except grpc.aio.AioRpcError:
            quota = 0
        self._quotas[user] = (time.monotonic() + QUOTA_CACHE_SECONDS, quota)
        return quota

    async def check_limits(self, messages: list[tuple[str, StreamMessage]]) -> None:
        """After usage is applied: a user past the monthly token quota gets usage.limit.reached, once a month."""
        users = {owner(m.data) for _, m in messages if m.type == "usage.recorded"} - {""}
        if not users:
            return
        for user in await self._repo.subscribed(sorted(users), "usage.limit.reached"):
            quota = await self._quota(user)
            if not quota:
                continue
            month = dt.datetime.now(dt.UTC).date().replace(day=1)
            used = await self._repo.month_tokens(user, month)
            if used < quota:
                continue
            evt = domain.event_id("limits", f"{user}:{month.isoformat()}", "tokens_per_month")
            payload = domain.body("usage.limit.reached", evt, int(time.time()), {
                "limit": "tokens_per_month", "limit_value": quota, "current_value": used,
                "period_start": month.isoformat()})
            if await self._repo.cross(user, month, "tokens_per_month", evt, payload):
                log.info("usage limit reached", user_id=user, limit="tokens_per_month", used=used, quota=quota)

