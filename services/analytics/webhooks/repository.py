"""All SQL of webhooks: endpoints, the fan-out of an event into deliveries, the delivery log and its schedule."""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Endpoint:
    id: str
    user_id: str
    url: str
    events: list[str]
    created_at: dt.datetime


def _endpoint(r: asyncpg.Record) -> Endpoint:
    return Endpoint(r["id"], r["user_id"], r["url"], list(r["events"]), r["created_at"])


async def fan_out(conn: asyncpg.Connection | asyncpg.Pool, user_id: str, event_type: str, evt_id: str,
                  payload: str, happened: dt.datetime) -> int:
    """One pending delivery per live endpoint of the user subscribed to the event; none twice per endpoint, and
    none to an endpoint registered after the event happened (a replay after a rebuild sends nothing new)."""
    rows = await conn.fetch(
        """INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, payload)
           SELECT 'whd_' || substr(md5(w.id || ':' || $2), 1, 24), w.id, $2, $3, $4 FROM webhooks w
           WHERE w.deleted_at IS NULL AND w.user_id = $1 AND $3 = ANY(w.events) AND w.created_at <= $5
           ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING id""",
        user_id, evt_id, event_type, payload, happened)
    return len(rows)


class WebhookRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, user_id: str, url: str, events: list[str], secret: str) -> Endpoint:
        r = await self._pool.fetchrow(
            "INSERT INTO webhooks (id, user_id, url, events, secret) VALUES ($1, $2, $3, $4, $5) RETURNING *",
            f"wh_{secrets.token_hex(12)}", user_id, url, events, secret)
        return _endpoint(r)

    async def list(self, user_id: str) -> list[Endpoint]:
        rows = await self._pool.fetch("SELECT * FROM webhooks WHERE user_id = $1 AND deleted_at IS NULL "
                                      "ORDER BY created_at DESC, id", user_id)
        return [_endpoint(r) for r in rows]

    async def get(self, user_id: str, webhook_id: str) -> Endpoint | None:
        r = await self._pool.fetchrow("SELECT * FROM webhooks WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL",
                                      webhook_id, user_id)
        return _endpoint(r) if r else None

    async def delete(self, user_id: str, webhook_id: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            found = await conn.fetchval(
                "UPDATE webhooks SET deleted_at = now() WHERE id = $1 AND user_id = $2 AND deleted_at IS NULL "
                "RETURNING id", webhook_id, user_id)
            if found:
                await conn.execute("UPDATE webhook_deliveries SET status = 'cancelled' "
                                   "WHERE webhook_id = $1 AND status = 'pending'", webhook_id)
        return found is not None

    async def deliveries(self, webhook_id: str, limit: int) -> list[asyncpg.Record]:
        return await self._pool.fetch(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY created_at DESC, id LIMIT $2",
            webhook_id, limit)

    # -- delivery ------------------------------------------------------------------------------------------------
    async def due(self, requeue_after: dt.timedelta) -> list[str]:
        """Claim the pending deliveries that are due and not on the queue (or enqueued long ago and lost)."""
        rows = await self._pool.fetch(
            """UPDATE webhook_deliveries SET enqueued_at = now()
               WHERE id IN (SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now()
                            AND (enqueued_at IS NULL OR enqueued_at < now() - $1::interval)
                            ORDER BY next_attempt_at LIMIT 500 FOR UPDATE SKIP LOCKED)
               RETURNING id""", requeue_after)
        return [r["id"] for r in rows]

    async def attempt_target(self, delivery_id: str) -> asyncpg.Record | None:
        return await self._pool.fetchrow(
            """SELECT d.id, d.event_id, d.payload, d.attempts, w.url, w.secret FROM webhook_deliveries d
               JOIN webhooks w ON w.id = d.webhook_id
               WHERE d.id = $1 AND d.status = 'pending' AND w.deleted_at IS NULL""", delivery_id)

    async def succeeded(self, delivery_id: str, status_code: int) -> None:
        await self._pool.execute(
            """UPDATE webhook_deliveries SET status = 'succeeded', attempts = attempts + 1,
                   last_status_code = $2, last_error = '', delivered_at = now(), enqueued_at = NULL
               WHERE id = $1 AND status = 'pending'""", delivery_id, status_code)

    async def failed(self, delivery_id: str, status_code: int | None, error: str, max_attempts: int,
                     retry_in: float) -> None:
        await self._pool.execute(
            """UPDATE webhook_deliveries SET attempts = attempts + 1, last_status_code = $2, last_error = $3,
                   status = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END,
                   next_attempt_at = now() + make_interval(secs => $5), enqueued_at = NULL
               WHERE id = $1 AND status = 'pending'""", delivery_id, status_code, error, max_attempts, retry_in)

    # -- usage.limit.reached -------------------------------------------------------------------------------------
    async def subscribed(self, user_ids: list[str], event_type: str) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT DISTINCT user_id FROM webhooks WHERE user_id = ANY($1) AND $2 = ANY(events) "
            "AND deleted_at IS NULL", user_ids, event_type)
        return [r["user_id"] for r in rows]

    async def month_tokens(self, user_id: str, month: dt.date) -> int:
        start = dt.datetime.combine(month, dt.time(), dt.UTC)
        return await self._pool.fetchval(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint FROM usage_hourly "
            "WHERE user_id = $1 AND hour >= $2", user_id, start)

    async def cross(self, user_id: str, month: dt.date, limit: str, evt_id: str, payload: str) -> bool:
        """Record a crossed limit and fan its event out, atomically; False when it was recorded before (the event
        is emitted once per user, month and limit)."""
        async with self._pool.acquire() as conn, conn.transaction():
            new = await conn.fetchval(
                "INSERT INTO limit_crossings (user_id, month, limit_name) VALUES ($1, $2, $3) "
                "ON CONFLICT DO NOTHING RETURNING true", user_id, month, limit)
            if new:
                await fan_out(conn, user_id, "usage.limit.reached", evt_id, payload, dt.datetime.now(dt.UTC))
        return bool(new)
