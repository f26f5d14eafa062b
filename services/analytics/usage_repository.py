"""Reads of the usage ledger (usage_hourly, usage_latency): per-bucket sums and latency sketches."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import asyncpg


class UsageRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def buckets(self, user_id: str | None, start: dt.datetime, end: dt.datetime, granularity: str,
                      model: str | None) -> list[asyncpg.Record]:
        """Sums per (bucket start, model) over [start, end); `granularity` is `day` or `hour`."""
        return await self._pool.fetch(
            """SELECT date_trunc($4, hour, 'UTC') bucket, model, sum(requests)::bigint requests,
                      sum(prompt_tokens)::bigint prompt_tokens, sum(completion_tokens)::bigint completion_tokens,
                      sum(cost) cost
               FROM usage_hourly WHERE hour >= $2 AND hour < $3 AND ($1::text IS NULL OR user_id = $1)
                   AND ($5::text IS NULL OR model = $5)
               GROUP BY 1, 2 ORDER BY 1, 2""", user_id, start, end, granularity, model)

    async def sketches(self, user_id: str | None, start: dt.datetime, end: dt.datetime, granularity: str,
                       model: str | None) -> dict[tuple[dt.datetime, str], dict[int, int]]:
        rows = await self._pool.fetch(
            """SELECT date_trunc($4, hour, 'UTC') bucket, model, bin, sum(count)::bigint n
               FROM usage_latency WHERE hour >= $2 AND hour < $3 AND ($1::text IS NULL OR user_id = $1)
                   AND ($5::text IS NULL OR model = $5)
               GROUP BY 1, 2, 3""", user_id, start, end, granularity, model)
        out: dict[tuple[dt.datetime, str], dict[int, int]] = defaultdict(dict)
        for r in rows:
            out[(r["bucket"], r["model"])][r["bin"]] = r["n"]
        return out

    async def month(self, user_id: str | None, start: dt.datetime, end: dt.datetime) -> asyncpg.Record:
        return await self._pool.fetchrow(
            """SELECT coalesce(sum(requests), 0)::bigint requests,
                      coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint tokens, coalesce(sum(cost), 0) cost
               FROM usage_hourly WHERE hour >= $2 AND hour < $3 AND ($1::text IS NULL OR user_id = $1)""",
            user_id, start, end)
