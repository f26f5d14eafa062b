"""Reads of the usage ledger (usage_hourly, usage_latency): per-bucket sums and latency sketches."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import asyncpg


def _where(user_id: str | None, model: str | None) -> tuple[str, list[Any]]:
    """The filters as literal SQL conditions (not `$n IS NULL OR ...`): a prepared statement's generic plan cannot
    use the (user_id, hour) index behind an OR, and scanned every user's rows (bench/analytics.py)."""
    conditions, args = ["hour >= $1", "hour < $2"], []
    if user_id is not None:
        args.append(user_id)
        conditions.append(f"user_id = ${len(args) + 2}")
    if model is not None:
        args.append(model)
        conditions.append(f"model = ${len(args) + 2}")
    return " AND ".join(conditions), args


class UsageRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def buckets(self, user_id: str | None, start: dt.datetime, end: dt.datetime, granularity: str,
                      model: str | None) -> list[asyncpg.Record]:
        """Sums per (bucket start, model) over [start, end); `granularity` is `day` or `hour`."""
        where, args = _where(user_id, model)
        unit = "day" if granularity == "day" else "hour"
        return await self._pool.fetch(
            f"""SELECT date_trunc('{unit}', hour, 'UTC') bucket, model, sum(requests)::bigint requests,
                       sum(prompt_tokens)::bigint prompt_tokens, sum(completion_tokens)::bigint completion_tokens,
                       sum(cost) cost
                FROM usage_hourly WHERE {where} GROUP BY 1, 2 ORDER BY 1, 2""", start, end, *args)

    async def sketches(self, user_id: str | None, start: dt.datetime, end: dt.datetime, granularity: str,
                       model: str | None) -> dict[tuple[dt.datetime, str], dict[int, int]]:
        where, args = _where(user_id, model)
        unit = "day" if granularity == "day" else "hour"
        rows = await self._pool.fetch(
            f"""SELECT date_trunc('{unit}', hour, 'UTC') bucket, model, bin, sum(count)::bigint n
                FROM usage_latency WHERE {where} GROUP BY 1, 2, 3""", start, end, *args)
        out: dict[tuple[dt.datetime, str], dict[int, int]] = defaultdict(dict)
        for r in rows:
            out[(r["bucket"], r["model"])][r["bin"]] = r["n"]
        return out

    async def month(self, user_id: str | None, start: dt.datetime, end: dt.datetime) -> asyncpg.Record:
        where, args = _where(user_id, None)
        return await self._pool.fetchrow(
            f"""SELECT coalesce(sum(requests), 0)::bigint requests,
                       coalesce(sum(prompt_tokens + completion_tokens), 0)::bigint tokens, coalesce(sum(cost), 0) cost
                FROM usage_hourly WHERE {where}""", start, end, *args)
