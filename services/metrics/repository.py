"""All SQL of the metrics service: stored response scores and the daily aggregates trends read."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from .scoring import DIMENSIONS

_METRIC_COLUMNS = ("overall_quality", *DIMENSIONS)


@dataclass
class StoredScore:
    """One stored score as the read endpoints need it."""

    response_id: int
    metrics: dict[str, float]
    perplexity: float | None
    mean_logprob: float | None
    detailed_analysis: dict[str, Any]
    scorer_version: str
    calculated_at: dt.datetime


@dataclass
class DayRow:
    """One UTC day of trends: the mean of every metric and the distinct experiments."""

    day: dt.date
    means: dict[str, float]
    experiments: int


def _stored(r: asyncpg.Record) -> StoredScore:
    return StoredScore(
        response_id=r["response_id"],
        metrics={m: r[m] for m in _METRIC_COLUMNS},
        perplexity=r["perplexity"],
        mean_logprob=r["mean_logprob"],
        detailed_analysis=json.loads(r["detailed_analysis"]),
        scorer_version=r["scorer_version"],
        calculated_at=r["calculated_at"],
    )


class ScoreRepository:
    """response_scores in the metrics schema."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def upsert(self, conn: asyncpg.Connection | None, row: dict[str, Any]) -> dt.datetime:
        """Store (or replace: scoring the same response again) one score; returns its calculated_at."""
        sql = f"""INSERT INTO response_scores
                      (response_id, experiment_id, experiment_type, model, response_created_at,
                       {", ".join(_METRIC_COLUMNS)}, perplexity, mean_logprob, detailed_analysis, scorer_version)
                  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15::json, $16)
                  ON CONFLICT (response_id) DO UPDATE SET
                      experiment_id = EXCLUDED.experiment_id, experiment_type = EXCLUDED.experiment_type,
                      model = EXCLUDED.model, response_created_at = EXCLUDED.response_created_at,
                      {", ".join(f"{m} = EXCLUDED.{m}" for m in _METRIC_COLUMNS)},
                      perplexity = EXCLUDED.perplexity, mean_logprob = EXCLUDED.mean_logprob,
                      detailed_analysis = EXCLUDED.detailed_analysis, scorer_version = EXCLUDED.scorer_version,
                      calculated_at = now()
                  RETURNING calculated_at"""
        args = (
            row["response_id"], row["experiment_id"], row["experiment_type"], row["model"], row["created_at"],
            *(row["metrics"][m] for m in _METRIC_COLUMNS), row["perplexity"], row["mean_logprob"],
            json.dumps(row["detailed_analysis"]), row["scorer_version"],
        )
        return await (conn or self._pool).fetchval(sql, *args)

    async def upsert_many(self, rows: list[dict[str, Any]]) -> list[dt.datetime]:
        """All or nothing: one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            return [await self.upsert(conn, r) for r in rows]

    async def get(self, response_id: int) -> StoredScore | None:
        r = await self._pool.fetchrow("SELECT * FROM response_scores WHERE response_id = $1", response_id)
        return _stored(r) if r else None

    async def get_many(self, ids: list[int]) -> dict[int, StoredScore]:
        rows = await self._pool.fetch("SELECT * FROM response_scores WHERE response_id = ANY($1::int[])", ids)
        return {r["response_id"]: _stored(r) for r in rows}

    async def daily(self, since: dt.datetime, experiment_type: str) -> list[DayRow]:
        """Per UTC day since `since`, oldest first: each metric's mean and the distinct experiments."""
        where = "response_created_at >= $1" + (" AND experiment_type = $2" if experiment_type else "")
        args: list[Any] = [since] + ([experiment_type] if experiment_type else [])
        rows = await self._pool.fetch(
            f"""SELECT (response_created_at AT TIME ZONE 'UTC')::date AS day,
                       {", ".join(f"avg({m}) AS {m}" for m in _METRIC_COLUMNS)},
                       count(DISTINCT experiment_id) AS experiments
                FROM response_scores WHERE {where} GROUP BY 1 ORDER BY 1""",
            *args,
        )
        return [DayRow(r["day"], {m: r[m] for m in _METRIC_COLUMNS}, r["experiments"]) for r in rows]
