"""Reads of the analytics read model (all of its SQL but the projection's writes, which are in projector.py)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import asyncpg

from .readmodel import PARAMETERS
from .stats import Sums

# Optional filters: NULL means "all".
_FILTER = "($3::text[] IS NULL OR model = ANY($3)) AND ($4::text[] IS NULL OR experiment_type = ANY($4))"


@dataclass(frozen=True)
class Scope:
    """Days [start, end] (UTC, inclusive) and optional model / experiment type filters."""

    start: dt.date | None = None
    end: dt.date | None = None
    models: list[str] | None = None
    types: list[str] | None = None

    def args(self) -> tuple[Any, ...]:
        return (self.start or dt.date.min, self.end or dt.date.max, self.models or None, self.types or None)


@dataclass(frozen=True)
class Totals:
    responses: int = 0
    failures: int = 0
    cost: float = 0.0
    time_ms: float = 0.0
    scored: int = 0
    quality_sum: float = 0.0
    models: int = 0

    @property
    def average_quality(self) -> float:
        return self.quality_sum / self.scored if self.scored else 0.0


@dataclass(frozen=True)
class Combo:
    """A parameter bucket's observations (per model when grouped so)."""

    model: str
    parameters: dict[str, float]
    responses: int
    cost: float
    time_ms: float
    scored: int
    quality_sum: float
    quality_sq: float
    creativity_sum: float
    experiments: int = 0

    @property
    def quality(self) -> float:
        return self.quality_sum / self.scored

    @property
    def mean_cost(self) -> float:
        return self.cost / self.responses if self.responses else 0.0

    @property
    def mean_seconds(self) -> float:
        return self.time_ms / self.responses / 1000 if self.responses else 0.0

    @property
    def creativity(self) -> float:
        return self.creativity_sum / self.scored


class AnalyticsRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def totals(self, scope: Scope) -> Totals:
        r = await self._pool.fetchrow(
            f"""SELECT coalesce(sum(responses), 0)::bigint responses, coalesce(sum(failures), 0)::bigint failures,
                       coalesce(sum(cost), 0) cost, coalesce(sum(time_ms), 0) time_ms,
                       coalesce(sum(scored), 0)::bigint scored, coalesce(sum(quality_sum), 0) quality_sum,
                       count(DISTINCT model) FILTER (WHERE responses > 0) models
                FROM daily_model WHERE day BETWEEN $1 AND $2 AND {_FILTER}""", *scope.args())
        return Totals(**dict(r))

    async def experiments_created(self, since: dt.datetime, until: dt.datetime, scope: Scope) -> int:
        return await self._pool.fetchval(
            """SELECT count(*) FROM experiments WHERE created_at >= $1 AND created_at < $2
               AND ($3::text[] IS NULL OR model = ANY($3)) AND ($4::text[] IS NULL OR type = ANY($4))""",
            since, until, scope.models or None, scope.types or None)

    async def daily_quality(self, scope: Scope) -> list[asyncpg.Record]:
        """Per day and model: scored responses and Σquality, with the day's distinct experiments."""
        return await self._pool.fetch(
            f"""WITH q AS (SELECT day, model, sum(scored)::bigint scored, sum(quality_sum) quality_sum FROM daily_model
                         WHERE day BETWEEN $1 AND $2 AND {_FILTER} GROUP BY day, model HAVING sum(scored) > 0),
                     e AS (SELECT day, count(DISTINCT experiment_id) experiments FROM daily_experiments
                         WHERE day BETWEEN $1 AND $2 AND {_FILTER} GROUP BY day)
                SELECT q.*, coalesce(e.experiments, 0) experiments FROM q LEFT JOIN e USING (day)
                ORDER BY day, model""", *scope.args())

    async def model_performance(self, scope: Scope) -> list[asyncpg.Record]:
        return await self._pool.fetch(
            f"""WITH m AS (SELECT model, sum(responses)::bigint responses, sum(cost) cost, sum(time_ms) time_ms,
                                 sum(scored)::bigint scored, sum(quality_sum) quality_sum
                          FROM daily_model WHERE day BETWEEN $1 AND $2 AND {_FILTER} GROUP BY model
                          HAVING sum(responses) > 0),
                     e AS (SELECT model, count(DISTINCT experiment_id) experiments FROM daily_experiments
                          WHERE day BETWEEN $1 AND $2 AND {_FILTER} GROUP BY model)
                SELECT m.*, coalesce(e.experiments, 0) experiments FROM m LEFT JOIN e USING (model)""",
            *scope.args())

    async def combos(self, scope: Scope) -> list[Combo]:
        """The period's parameter buckets with at least one scored response, pooled over the models in scope."""
        params = ", ".join(PARAMETERS)
        rows = await self._pool.fetch(
            f"""SELECT ''::text AS model, {params}, sum(responses)::bigint responses, sum(cost) cost,
                       sum(time_ms) time_ms, sum(scored)::bigint scored, sum(quality_sum) quality_sum,
                       sum(quality_sq) quality_sq,
                       sum(creativity_sum) creativity_sum
                FROM daily_combos WHERE day BETWEEN $1 AND $2 AND {_FILTER}
                GROUP BY {params} HAVING sum(scored) > 0""", *scope.args())
        return [Combo(
            model=r["model"], parameters={p: r[p] for p in PARAMETERS}, responses=r["responses"], cost=r["cost"],
            time_ms=r["time_ms"], scored=r["scored"], quality_sum=r["quality_sum"], quality_sq=r["quality_sq"],
            creativity_sum=r["creativity_sum"]) for r in rows]

    async def combo_totals(self, models: list[str] | None) -> list[Combo]:
        """All-time parameter buckets per model with at least one scored response (optimisation)."""
        rows = await self._pool.fetch(
            "SELECT * FROM combo_totals WHERE scored > 0 AND ($1::text[] IS NULL OR model = ANY($1))", models)
        return [Combo(
            model=r["model"], parameters={p: r[p] for p in PARAMETERS}, responses=r["responses"], cost=r["cost"],
            time_ms=r["time_ms"], scored=r["scored"], quality_sum=r["quality_sum"], quality_sq=r["quality_sq"],
            creativity_sum=r["creativity_sum"], experiments=r["experiments"]) for r in rows]

    async def pair_totals(self, models: list[str] | None) -> dict[tuple[str, str], Sums]:
        """All-time Pearson sums per (x, y), over the given models or all."""
        rows = await self._pool.fetch(
            """SELECT x, y, sum(n)::float8 n, sum(sx) sx, sum(sy) sy, sum(sxx) sxx, sum(syy) syy, sum(sxy) sxy
               FROM pair_totals WHERE $1::text[] IS NULL OR model = ANY($1) GROUP BY x, y""", models)
        return {(r["x"], r["y"]): Sums(r["n"], r["sx"], r["sy"], r["sxx"], r["syy"], r["sxy"]) for r in rows}

    async def pairs(self, scope: Scope) -> dict[tuple[str, str], Sums]:
        rows = await self._pool.fetch(
            f"""SELECT x, y, sum(n)::float8 n, sum(sx) sx, sum(sy) sy, sum(sxx) sxx, sum(syy) syy, sum(sxy) sxy
                FROM daily_pairs WHERE day BETWEEN $1 AND $2 AND {_FILTER} GROUP BY x, y""", *scope.args())
        return {(r["x"], r["y"]): Sums(r["n"], r["sx"], r["sy"], r["sxx"], r["syy"], r["sxy"]) for r in rows}

    async def recent_activity(self, scope: Scope, limit: int = 20) -> list[asyncpg.Record]:
        return await self._pool.fetch(
            f"""SELECT type, experiment_id, name, quality, at FROM activity
                WHERE at::date BETWEEN $1 AND $2 AND {_FILTER} ORDER BY at DESC, event_id DESC LIMIT {int(limit)}""",
            *scope.args())

    # -- platform statistics ------------------------------------------------------------------------------------
    async def model_totals(self, model: str) -> asyncpg.Record:
        """A model's usage (every API family) and lab quality/failures, over all time."""
        return await self._pool.fetchrow(
            """SELECT (SELECT coalesce(sum(requests), 0) FROM usage_hourly WHERE model = $1)::bigint requests,
                      (SELECT coalesce(sum(cost), 0) FROM usage_hourly WHERE model = $1) cost,
                      (SELECT coalesce(sum(latency_ms), 0) FROM usage_hourly WHERE model = $1) latency_ms,
                      coalesce(sum(scored), 0)::bigint scored, coalesce(sum(quality_sum), 0) quality_sum,
                      coalesce(sum(failures), 0)::bigint failures
               FROM daily_model WHERE model = $1""", model)

    async def system_totals(self, since: dt.datetime) -> asyncpg.Record:
        return await self._pool.fetchrow(
            """SELECT (SELECT count(*) FROM experiments) experiments,
                      (SELECT coalesce(sum(responses), 0) FROM daily_model)::bigint responses,
                      (SELECT coalesce(sum(cost), 0) FROM usage_hourly) cost,
                      (SELECT count(DISTINCT user_id) FROM usage_hourly WHERE hour >= $1 AND user_id <> '') users,
                      (SELECT coalesce(sum(requests), 0) FROM usage_hourly WHERE hour >= $1)::bigint requests,
                      (SELECT coalesce(sum(latency_ms), 0) FROM usage_hourly WHERE hour >= $1) latency_ms,
                      (SELECT coalesce(sum(failures), 0) FROM daily_model WHERE day >= $1::date)::bigint failures,
                      (SELECT count(*) FROM failure_minutes WHERE minute >= $1) failed_minutes,
                      (SELECT min(hour) FROM usage_hourly) first_hour,
                      (SELECT coalesce(sum(requests), 0) FROM usage_hourly)::bigint generations""", since)

    async def job_counts(self) -> dict[tuple[str, str], int]:
        rows = await self._pool.fetch("SELECT kind, status, count(*) n FROM jobs GROUP BY kind, status")
        return {(r["kind"], r["status"]): r["n"] for r in rows}
