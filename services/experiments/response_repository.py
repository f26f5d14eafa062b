"""All SQL of the responses resource (`/api/responses/...`): generated responses, their scores and run bookkeeping."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from llmlab.runtime import db

from .domain import ListQuery

_SELECT = """
    SELECT r.id, r.experiment_id, r.content, r.model, r.parameters, r.quality_metrics, r.overall_quality,
           r.response_time_ms, r.prompt_tokens, r.token_count, r.cost, r.created_at, r.finish_reason, r.perplexity,
           r.mean_logprob, r.text_stats, e.name AS experiment_name, e.model AS experiment_model, e.tags, e.favorited
    FROM responses r JOIN experiments e ON e.id = r.experiment_id
"""
_SORT_SQL = {
    "created_at": "r.created_at",
    "quality": "r.overall_quality",
    "cost": "r.cost",
    "response_time": "r.response_time_ms",
}


@dataclass
class ResponseRecord:
    """One stored, successful response with what its experiment adds to it in listings."""

    id: int
    experiment_id: int
    content: str
    model: str
    parameters: dict[str, Any]
    quality_metrics: dict[str, float] | None
    overall_quality: float | None
    response_time_ms: int
    prompt_tokens: int
    token_count: int
    cost: float
    created_at: dt.datetime
    finish_reason: str = ""
    perplexity: float | None = None
    mean_logprob: float | None = None
    text_stats: dict[str, Any] | None = None
    experiment_name: str = ""
    tags: list[str] = field(default_factory=list)
    favorited: bool = False

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ResponseRecord:
        return cls(
            id=r["id"], experiment_id=r["experiment_id"], content=r["content"],
            model=r["model"] or r["experiment_model"], parameters=json.loads(r["parameters"]),
            quality_metrics=json.loads(r["quality_metrics"]) if r["quality_metrics"] else None,
            overall_quality=r["overall_quality"], response_time_ms=r["response_time_ms"],
            prompt_tokens=r["prompt_tokens"], token_count=r["token_count"], cost=r["cost"],
            created_at=r["created_at"], finish_reason=r["finish_reason"], perplexity=r["perplexity"],
            mean_logprob=r["mean_logprob"], text_stats=json.loads(r["text_stats"]) if r["text_stats"] else None,
            experiment_name=r["experiment_name"], tags=list(r["tags"]), favorited=r["favorited"],
        )


@dataclass
class ResponseFilter:
    """Filters of `GET /api/responses/{experiment_id}` (one experiment) and `GET /api/responses/comparison` (across
    experiments)."""

    page: ListQuery
    experiment_id: int | None = None
    min_quality: float | None = None
    max_quality: float | None = None
    search: str = ""
    models: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    date_from: dt.datetime | None = None
    date_to: dt.datetime | None = None
    date_to_exclusive: bool = False


@dataclass
class Outcome:
    """A generation's stored result: the fields a new response row gets."""

    experiment_id: int
    run_id: str
    model: str
    parameters: dict[str, Any]
    content: str = ""
    response_time_ms: int = 0
    prompt_tokens: int = 0
    token_count: int = 0
    cost: float = 0.0
    finish_reason: str = ""
    error: dict[str, Any] | None = None
    # A sweep's response: its idempotency key (combination, iteration) and the sampling seed it was generated with.
    sweep_combination: int | None = None
    sweep_iteration: int | None = None
    seed: int | None = None


def _where(f: ResponseFilter) -> tuple[str, list[Any]]:
    clauses = ["r.status = 'completed'"]
    args: list[Any] = []

    def arg(v: Any) -> str:
        args.append(v)
        return f"${len(args)}"

    if f.experiment_id is not None:
        clauses.append(f"r.experiment_id = {arg(f.experiment_id)}")
    if f.min_quality is not None:
        clauses.append(f"r.overall_quality >= {arg(f.min_quality)}")
    if f.max_quality is not None:
        clauses.append(f"r.overall_quality <= {arg(f.max_quality)}")
    if f.search:
        pattern = db.contains_pattern(f.search)
        clauses.append(f"r.content ILIKE {arg(pattern)}")
    if f.models:
        clauses.append(f"coalesce(nullif(r.model, ''), e.model) = ANY({arg(f.models)}::text[])")
    if f.tags:
        clauses.append(f"e.tags @> {arg(f.tags)}::text[]")
    if f.date_from:
        clauses.append(f"r.created_at >= {arg(f.date_from)}")
    if f.date_to:
        clauses.append(f"r.created_at {'<' if f.date_to_exclusive else '<='} {arg(f.date_to)}")
    return "WHERE " + " AND ".join(clauses), args


class ResponseRepository:
    """Responses in Postgres (the experiments schema)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, o: Outcome) -> tuple[int, dt.datetime]:
        """Store one generation's outcome (completed, or failed with its error); returns (id, created_at)."""
        row = await self._pool.fetchrow(
            """INSERT INTO responses (experiment_id, run_id, model, parameters, content, response_time_ms,
                                      prompt_tokens, token_count, cost, finish_reason, status, error)
               VALUES ($1, $2::uuid, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
               RETURNING id, created_at""",
            o.experiment_id, o.run_id, o.model, json.dumps(o.parameters), o.content, o.response_time_ms,
            o.prompt_tokens, o.token_count, o.cost, o.finish_reason, "failed" if o.error else "completed",
            json.dumps(o.error) if o.error else None,
        )
        return row["id"], row["created_at"]

    async def insert_once(self, o: Outcome) -> tuple[int, dt.datetime] | None:
        """Store a sweep's response unless one with its (experiment, combination, iteration) exists: returns
        (id, created_at), or None when another attempt stored it first."""
        row = await self._pool.fetchrow(
            """INSERT INTO responses (experiment_id, run_id, model, parameters, content, response_time_ms,
                                      prompt_tokens, token_count, cost, finish_reason, status, error,
                                      sweep_combination, sweep_iteration, seed)
               VALUES ($1, $2::uuid, $3, $4::jsonb, $5, $6, $7, $8, $9, $10, $11, $12::jsonb, $13, $14, $15)
               ON CONFLICT (experiment_id, sweep_combination, sweep_iteration) WHERE sweep_combination IS NOT NULL
               DO NOTHING
               RETURNING id, created_at""",
            o.experiment_id, o.run_id, o.model, json.dumps(o.parameters), o.content, o.response_time_ms,
            o.prompt_tokens, o.token_count, o.cost, o.finish_reason, "failed" if o.error else "completed",
            json.dumps(o.error) if o.error else None, o.sweep_combination, o.sweep_iteration, o.seed,
        )
        return (row["id"], row["created_at"]) if row else None

    async def set_scores(self, response_id: int, metrics: dict[str, float], overall: float,
                         perplexity: float | None, mean_logprob: float | None, text_stats: dict[str, Any]) -> None:
        await self._pool.execute(
            """UPDATE responses SET quality_metrics = $2::jsonb, overall_quality = $3, perplexity = $4,
                                    mean_logprob = $5, text_stats = $6::jsonb
               WHERE id = $1""",
            response_id, json.dumps(metrics), overall, perplexity, mean_logprob, json.dumps(text_stats),
        )

    async def set_status(self, experiment_id: int, status: str) -> None:
        await self._pool.execute("UPDATE experiments SET status = $2, updated_at = now() WHERE id = $1",
                                 experiment_id, status)

    async def get(self, response_id: int) -> ResponseRecord | None:
        r = await self._pool.fetchrow(f"{_SELECT} WHERE r.id = $1 AND r.status = 'completed'", response_id)
        return ResponseRecord.from_record(r) if r else None

    async def get_many(self, ids: list[int]) -> dict[int, ResponseRecord]:
        rows = await self._pool.fetch(f"{_SELECT} WHERE r.id = ANY($1::int[]) AND r.status = 'completed'", ids)
        return {r["id"]: ResponseRecord.from_record(r) for r in rows}

    async def of_run(self, run_id: str) -> list[ResponseRecord]:
        rows = await self._pool.fetch(f"{_SELECT} WHERE r.run_id = $1::uuid AND r.status = 'completed' ORDER BY r.id",
                                      run_id)
        return [ResponseRecord.from_record(r) for r in rows]

    async def of_experiment(self, experiment_id: int) -> tuple[list[ResponseRecord], int]:
        """Every successful response of an experiment, oldest first, and how many of its generations failed."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"{_SELECT} WHERE r.experiment_id = $1 AND r.status = 'completed' ORDER BY r.id", experiment_id)
            failed = await conn.fetchval(
                "SELECT count(*) FROM responses WHERE experiment_id = $1 AND status = 'failed'", experiment_id)
        return [ResponseRecord.from_record(r) for r in rows], failed

    async def list(self, f: ResponseFilter) -> tuple[list[ResponseRecord], db.Total, bool]:
        """One page, the total (exact up to db.EXACT_COUNT_CAP, else estimated) and whether a next page exists;
        the page's ids come from the sort key's index, then only its rows are joined (docs/scale.md)."""
        where, args = _where(f)
        q = f.page
        direction = "ASC" if q.sort_order == "asc" else "DESC"
        # Only quality can be null (not scored yet); the other sort keys are NOT NULL columns, and leaving NULLS
        # LAST off them lets the planner walk responses_created_idx instead of sorting every row.
        nulls = " NULLS LAST" if q.sort_by == "quality" else ""
        order = f"{_SORT_SQL[q.sort_by]} {direction}{nulls}, r.id {direction}"
        n = len(args)
        # The join is needed only to filter on the experiment's tags or model (a response always has one).
        joined = "JOIN experiments e ON e.id = r.experiment_id" if f.tags or f.models else ""
        async with self._pool.acquire() as conn:
            total = await db.count_capped(conn, f"FROM responses r {joined} {where}", args)
            rows = await conn.fetch(
                f"""WITH page AS MATERIALIZED (
                        SELECT r.id FROM responses r {joined} {where} ORDER BY {order}
                        LIMIT ${n + 1} OFFSET ${n + 2})
                    {_SELECT} JOIN page ON page.id = r.id ORDER BY {order}""",
                *args, q.limit + 1, q.offset)
        items = [ResponseRecord.from_record(r) for r in rows[: q.limit]]
        has_next = len(rows) > q.limit
        if total.estimated or has_next:
            total = db.Total(max(total.value, q.offset + len(items) + int(has_next)), total.estimated)
        return items, total, has_next
