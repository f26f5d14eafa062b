"""All SQL of sweeps (batch experiments, docs/sweeps.md): the sweep row beside its `batch` experiment, its responses
keyed by (experiment, combination, iteration), progress, and the engine throughput the estimates read."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from llmlab.runtime import db

from .sweep_stats import SweepResponse
from .sweeps import FINISHED, NewSweep

# sweeps.PRIORITIES, highest first.
_PRIORITY_RANK = "array_position(ARRAY['high','normal','low'], s.priority)"
_COUNTS = """
    LEFT JOIN LATERAL (
        SELECT count(*) AS done,
               count(*) FILTER (WHERE r.status = 'failed') AS failed,
               max(r.overall_quality) AS best_quality
        FROM responses r WHERE r.experiment_id = s.experiment_id AND r.sweep_combination IS NOT NULL
    ) c ON true
"""
_SELECT = f"""
    SELECT s.*, e.name, e.prompt, e.model, e.description, c.done, c.failed, c.best_quality
    FROM sweeps s JOIN experiments e ON e.id = s.experiment_id {_COUNTS}
"""
# Throughput of the engine as this service sees it: generated tokens over the time the engine was busy with the
# most recent responses (the union of their [created_at - response_time, created_at] intervals), so idle gaps
# between runs do not dilute it and concurrent generations are not double counted.
_THROUGHPUT = """
    WITH recent AS (
        SELECT created_at - make_interval(secs => response_time_ms / 1000.0) AS s, created_at AS e, token_count
        FROM responses WHERE status = 'completed' AND token_count > 0 AND created_at > now() - $1::interval
        ORDER BY created_at DESC LIMIT $2
    ), ordered AS (
        SELECT s, e, token_count, max(e) OVER (ORDER BY s ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_e
        FROM recent
    ), grouped AS (
        SELECT s, e, token_count, sum(CASE WHEN prev_e IS NULL OR s > prev_e THEN 1 ELSE 0 END)
                                  OVER (ORDER BY s ROWS UNBOUNDED PRECEDING) AS island
        FROM ordered
    )
    SELECT coalesce(sum(tokens), 0) AS tokens, coalesce(sum(busy), 0) AS busy_s, coalesce(sum(n), 0) AS n
    FROM (SELECT sum(token_count) AS tokens, extract(epoch FROM max(e) - min(s)) AS busy, count(*) AS n
          FROM grouped GROUP BY island) islands
"""


@dataclass
class SweepRow:
    id: int
    name: str
    description: str
    prompt: str
    model: str
    status: str
    priority: str
    combinations: list[dict[str, Any]]
    per_combination: int
    seed: int
    owner_id: str
    estimated_cost: float
    estimated_seconds: float
    current_combination: int | None
    dead_lettered: int
    error: str | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    completed_at: dt.datetime | None
    done: int
    failed: int
    best_quality: float | None

    @property
    def total_combinations(self) -> int:
        return len(self.combinations)

    @property
    def total_responses(self) -> int:
        return len(self.combinations) * self.per_combination

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> SweepRow:
        return cls(
            id=r["experiment_id"], name=r["name"], description=r["description"], prompt=r["prompt"],
            model=r["model"], status=r["status"], priority=r["priority"],
            combinations=json.loads(r["combinations"]), per_combination=r["responses_per_combination"],
            seed=r["seed"] if r["seed"] is not None else r["experiment_id"], owner_id=r["owner_id"],
            estimated_cost=r["estimated_cost"], estimated_seconds=r["estimated_seconds"],
            current_combination=r["current_combination"], dead_lettered=r["dead_lettered"], error=r["error"],
            created_at=r["created_at"], started_at=r["started_at"], completed_at=r["completed_at"],
            done=r["done"], failed=r["failed"], best_quality=r["best_quality"],
        )


@dataclass
class Existing:
    """A stored response of one combination, as a worker needs to know it."""

    response_id: int
    iteration: int
    status: str
    content: str
    scored: bool
    finish_reason: str
    prompt_tokens: int
    token_count: int
    created_at: dt.datetime
    parameters: dict[str, Any]


class SweepRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, s: NewSweep, owner: str, cost: float, seconds: float) -> SweepRow:
        """The `batch` experiment and its sweep row, in one transaction; not yet enqueued."""
        async with self._pool.acquire() as conn, conn.transaction():
            fixed = s.grid.fixed
            exp_id = await conn.fetchval(
                """INSERT INTO experiments (name, description, type, status, model, prompt, parameters,
                                            parameter_ranges, response_count, owner_id, config)
                   VALUES ($1, $2, 'batch', 'queued', $3, $4, $5::jsonb, $6::jsonb, $7, nullif($8, ''), $9::jsonb)
                   RETURNING id""",
                s.name, s.description, s.model, s.prompt, json.dumps(fixed),
                json.dumps(s.grid.ranges()) if s.grid.axes else None, s.per_combination, owner,
                json.dumps({"parameter_grid": s.raw_grid, "priority": s.priority}))
            await conn.execute(
                """INSERT INTO sweeps (experiment_id, priority, grid, combinations, responses_per_combination, seed,
                                       owner_id, estimated_cost, estimated_seconds)
                   VALUES ($1::integer, $2, $3::jsonb, $4::jsonb, $5, coalesce($6::bigint, $1::integer), $7, $8, $9)""",
                exp_id, s.priority, json.dumps(s.raw_grid), json.dumps(s.grid.combinations()), s.per_combination,
                s.seed, owner, cost, seconds)
            return await self._get(conn, exp_id)  # type: ignore[return-value]

    async def _get(self, conn: asyncpg.Connection, sweep_id: int) -> SweepRow | None:
        r = await conn.fetchrow(f"{_SELECT} WHERE s.experiment_id = $1", sweep_id)
        return SweepRow.from_record(r) if r else None

    async def get(self, sweep_id: int) -> SweepRow | None:
        async with self._pool.acquire() as conn:
            return await self._get(conn, sweep_id)

    async def queue_position(self, sweep_id: int) -> int:
        """1 + active sweeps ahead of this one (higher priority, or the same and older)."""
        return await self._pool.fetchval(
            f"""SELECT count(*) FROM sweeps s, sweeps me
                WHERE me.experiment_id = $1 AND s.status IN ('queued', 'running')
                  AND s.experiment_id <> me.experiment_id
                  AND ({_PRIORITY_RANK} < array_position(ARRAY['high','normal','low'], me.priority)
                       OR (s.priority = me.priority AND (s.created_at, s.experiment_id)
                                                         < (me.created_at, me.experiment_id)))""",
            sweep_id) + 1

    async def list(self, status: str, limit: int, offset: int) -> tuple[list[SweepRow], db.Total, bool]:
        """A page newest first, its total (db.count_capped) and whether another page follows (docs/scale.md)."""
        where = "WHERE s.status = $1" if status else "WHERE $1 = ''"
        async with self._pool.acquire() as conn:
            total = await db.count_capped(conn, f"FROM sweeps s {where}", [status])
            # The page's ids first (an index walk of the offset), then the progress counts of those rows only.
            rows = await conn.fetch(
                f"""WITH page AS MATERIALIZED (
                        SELECT s.experiment_id FROM sweeps s {where}
                        ORDER BY s.created_at DESC, s.experiment_id DESC LIMIT $2 OFFSET $3)
                    {_SELECT} JOIN page ON page.experiment_id = s.experiment_id
                    ORDER BY s.created_at DESC, s.experiment_id DESC""", status, limit + 1, offset)
        items = [SweepRow.from_record(r) for r in rows[:limit]]
        has_next = len(rows) > limit
        if total.estimated or has_next:
            total = db.Total(max(total.value, offset + len(items) + int(has_next)), total.estimated)
        return items, total, has_next

    async def delete(self, sweep_id: int) -> None:
        await self._pool.execute("DELETE FROM experiments WHERE id = $1 AND type = 'batch'", sweep_id)

    async def mark_enqueued(self, sweep_id: int) -> None:
        await self._pool.execute("UPDATE sweeps SET enqueued = true WHERE experiment_id = $1", sweep_id)

    async def unqueued(self, older_than_s: float) -> list[SweepRow]:
        """Active sweeps whose work items were never confirmed on the queue (the creator died in between)."""
        rows = await self._pool.fetch(
            f"{_SELECT} WHERE NOT s.enqueued AND s.status IN ('queued', 'running') "
            "AND s.created_at < now() - make_interval(secs => $1)", older_than_s)
        return [SweepRow.from_record(r) for r in rows]

    async def _mirror(self, conn: asyncpg.Connection, sweep_id: int, status: str) -> None:
        await conn.execute("UPDATE experiments SET status = $2, updated_at = now() WHERE id = $1", sweep_id, status)

    async def start(self, sweep_id: int, combination_id: int) -> bool:
        """Note the combination being generated; the first one moves the sweep to running. False once it is over."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                """UPDATE sweeps SET status = CASE WHEN status = 'queued' THEN 'running' ELSE status END,
                                     started_at = coalesce(started_at, now()), current_combination = $2
                   WHERE experiment_id = $1 AND status IN ('queued', 'running') RETURNING status""",
                sweep_id, combination_id)
            if status is not None:
                await self._mirror(conn, sweep_id, status)
            return status is not None

    async def status(self, sweep_id: int) -> str | None:
        return await self._pool.fetchval("SELECT status FROM sweeps WHERE experiment_id = $1", sweep_id)

    async def existing(self, sweep_id: int, combination_id: int) -> dict[int, Existing]:
        rows = await self._pool.fetch(
            """SELECT id, sweep_iteration, status, content, overall_quality IS NOT NULL AS scored, finish_reason,
                      prompt_tokens, token_count, created_at, parameters
               FROM responses WHERE experiment_id = $1 AND sweep_combination = $2""", sweep_id, combination_id)
        return {r["sweep_iteration"]: Existing(r["id"], r["sweep_iteration"], r["status"], r["content"], r["scored"],
                                               r["finish_reason"], r["prompt_tokens"], r["token_count"],
                                               r["created_at"], json.loads(r["parameters"])) for r in rows}

    async def finish_if_done(self, sweep_id: int) -> str | None:
        """Complete (or fail, when no response succeeded) a running sweep whose every response is stored."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                """UPDATE sweeps s SET status = CASE WHEN c.done = c.failed THEN 'failed' ELSE 'completed' END,
                                       completed_at = now(), current_combination = NULL,
                                       error = CASE WHEN c.done = c.failed THEN 'every generation failed' END
                   FROM (SELECT count(*) AS done, count(*) FILTER (WHERE status = 'failed') AS failed
                         FROM responses WHERE experiment_id = $1 AND sweep_combination IS NOT NULL) c
                   WHERE s.experiment_id = $1 AND s.status IN ('queued', 'running')
                     AND c.done >= jsonb_array_length(s.combinations) * s.responses_per_combination
                    RETURNING s.status""", sweep_id)
            if status is not None:
                await self._mirror(conn, sweep_id, status)
            return status

    async def cancel(self, sweep_id: int) -> str | None:
        """Cancel an active sweep; returns the status it has afterwards (None: no such sweep)."""
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval(
                """UPDATE sweeps SET status = 'cancelled', completed_at = now(), current_combination = NULL
                   WHERE experiment_id = $1 AND status IN ('queued', 'running') RETURNING status""", sweep_id)
            if status is not None:
                await self._mirror(conn, sweep_id, status)
                return status
            return await conn.fetchval("SELECT status FROM sweeps WHERE experiment_id = $1", sweep_id)

    async def dead_lettered(self, sweep_id: int) -> None:
        await self._pool.execute("UPDATE sweeps SET dead_lettered = dead_lettered + 1 WHERE experiment_id = $1",
                                 sweep_id)

    async def responses(self, sweep_id: int) -> list[SweepResponse]:
        rows = await self._pool.fetch(
            """SELECT id, sweep_combination, sweep_iteration, seed, status, parameters, overall_quality,
                      quality_metrics, cost, response_time_ms
               FROM responses WHERE experiment_id = $1 AND sweep_combination IS NOT NULL
               ORDER BY sweep_combination, sweep_iteration""", sweep_id)
        return [SweepResponse(r["id"], r["sweep_combination"], r["sweep_iteration"], r["seed"] or 0, r["status"],
                              json.loads(r["parameters"]), r["overall_quality"],
                              json.loads(r["quality_metrics"]) if r["quality_metrics"] else None, r["cost"],
                              r["response_time_ms"]) for r in rows]

    async def throughput(self, window_s: float = 3600, last: int = 500) -> tuple[float, int]:
        """(tokens per busy second, responses measured) over the most recent generations."""
        r = await self._pool.fetchrow(_THROUGHPUT, dt.timedelta(seconds=window_s), last)
        busy = float(r["busy_s"] or 0)
        return (float(r["tokens"]) / busy if busy > 0 else 0.0), int(r["n"])

