"""All SQL of the experiments service (schema from the pool's search_path)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from llmlab.runtime import db

from .domain import BulkAction, ExperimentPatch, ListQuery, NewExperiment

# An experiment's aggregates over its completed responses are kept on its row by the responses_rollup trigger
# (migrations/0004_list_at_scale.sql), so every list reads them from an index instead of its responses.
_COLUMNS = """
    e.id, e.uuid, e.name, e.description, e.type, e.status, e.model, e.prompt, e.parameters,
    e.parameter_ranges, e.response_count, e.tags, e.favorited, e.archived, e.created_at, e.updated_at,
    e.quality_score, e.cost_sum::double precision AS total_cost,
    CASE WHEN e.generated > 0 THEN e.duration_sum END AS duration_ms, e.generated
"""
# Each key has an index (0004); only quality can be null, listed last in both directions.
_SORT_SQL = {
    "created_at": "e.created_at",
    "updated_at": "e.updated_at",
    "name": "lower(e.name)",
    "quality": "e.quality_score",
}


def order_by(sort_by: str, sort_order: str) -> str:
    direction = "ASC" if sort_order == "asc" else "DESC"
    nulls = " NULLS LAST" if sort_by == "quality" else ""
    return f"{_SORT_SQL[sort_by]} {direction}{nulls}, e.id {direction}"


@dataclass
class ExperimentRow:
    """An experiment with the aggregates of its responses."""

    id: int
    uuid: str
    name: str
    description: str
    type: str
    status: str
    model: str
    prompt: str
    parameters: dict[str, Any]
    parameter_ranges: dict[str, Any] | None
    response_count: int
    tags: list[str]
    favorited: bool
    archived: bool
    created_at: Any
    updated_at: Any
    quality_score: float | None
    total_cost: float
    duration_ms: int | None
    generated: int = 0

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> ExperimentRow:
        return cls(
            id=r["id"],
            uuid=str(r["uuid"]),
            name=r["name"],
            description=r["description"],
            type=r["type"],
            status=r["status"],
            model=r["model"],
            prompt=r["prompt"],
            parameters=json.loads(r["parameters"]),
            parameter_ranges=json.loads(r["parameter_ranges"]) if r["parameter_ranges"] else None,
            response_count=r["response_count"],
            tags=list(r["tags"]),
            favorited=r["favorited"],
            archived=r["archived"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            quality_score=r["quality_score"],
            total_cost=float(r["total_cost"] or 0),
            duration_ms=r["duration_ms"],
            generated=r["generated"],
        )


@dataclass
class ResponseRow:
    """A generated response as GET /api/experiments/:id shows it."""

    id: int
    content: str
    quality_metrics: dict[str, Any] | None
    response_time_ms: int
    token_count: int
    cost: float


def _where(q: ListQuery) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []

    def arg(v: Any) -> str:
        args.append(v)
        return f"${len(args)}"

    if q.search:
        pattern = db.contains_pattern(q.search)
        p = arg(pattern)
        clauses.append(f"(e.name ILIKE {p} OR e.description ILIKE {p})")
    if q.type:
        clauses.append(f"e.type = {arg(q.type)}")
    if q.status:
        clauses.append(f"e.status = {arg(q.status)}")
    if q.model:
        clauses.append(f"e.model = {arg(q.model)}")
    if q.date_from:
        clauses.append(f"e.created_at >= {arg(q.date_from)}")
    if q.date_to:
        op = "<" if q.date_to_exclusive else "<="
        clauses.append(f"e.created_at {op} {arg(q.date_to)}")
    if q.favorited is not None:
        clauses.append(f"e.favorited = {arg(q.favorited)}")
    if not q.include_archived:
        clauses.append("NOT e.archived")
    return ("WHERE " + " AND ".join(clauses)) if clauses else "", args


class ExperimentRepository:
    """Experiments and their responses in Postgres."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, e: NewExperiment) -> ExperimentRow:
        async with self._pool.acquire() as conn:
            new_id = await conn.fetchval(
                """INSERT INTO experiments
                       (name, description, type, model, prompt, parameters, parameter_ranges, response_count, tags)
                   VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)
                   RETURNING id""",
                e.name,
                e.description,
                e.type,
                e.model,
                e.prompt,
                json.dumps(e.parameters),
                json.dumps(e.parameter_ranges) if e.parameter_ranges else None,
                e.response_count,
                e.tags,
            )
            return await self._get(conn, new_id)  # type: ignore[return-value]

    async def _get(self, conn: asyncpg.Connection, experiment_id: int) -> ExperimentRow | None:
        row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM experiments e WHERE e.id = $1", experiment_id)
        return ExperimentRow.from_record(row) if row else None

    async def get(self, experiment_id: int) -> ExperimentRow | None:
        async with self._pool.acquire() as conn:
            return await self._get(conn, experiment_id)

    async def responses(self, experiment_id: int) -> list[ResponseRow]:
        rows = await self._pool.fetch(
            """SELECT id, content, quality_metrics, response_time_ms, token_count, cost
               FROM responses WHERE experiment_id = $1 AND status = 'completed' ORDER BY id""",
            experiment_id,
        )
        return [
            ResponseRow(
                id=r["id"],
                content=r["content"],
                quality_metrics=json.loads(r["quality_metrics"]) if r["quality_metrics"] else None,
                response_time_ms=r["response_time_ms"],
                token_count=r["token_count"],
                cost=r["cost"],
            )
            for r in rows
        ]

    async def list(self, q: ListQuery) -> tuple[list[ExperimentRow], db.Total, bool]:
        """One page, the total (exact up to db.EXACT_COUNT_CAP, else estimated) and whether a next page exists.

        The page's ids come from an index-only walk of the sort key's index (deferred join), then only its rows
        are read; one row past the page says exactly whether another follows."""
        where, args = _where(q)
        order = order_by(q.sort_by, q.sort_order)
        n = len(args)
        async with self._pool.acquire() as conn:
            total = await db.count_capped(conn, f"FROM experiments e {where}", args)
            rows = await conn.fetch(
                f"""WITH page AS MATERIALIZED (
                        SELECT e.id FROM experiments e {where} ORDER BY {order} LIMIT ${n + 1} OFFSET ${n + 2})
                    SELECT {_COLUMNS} FROM page JOIN experiments e ON e.id = page.id ORDER BY {order}""",
                *args,
                q.limit + 1,
                q.offset,
            )
        items = [ExperimentRow.from_record(r) for r in rows[: q.limit]]
        has_next = len(rows) > q.limit
        if total.estimated or has_next:
            # An estimate never contradicts what was read: at least this page and one more row.
            floor = q.offset + len(items) + (1 if has_next else 0)
            total = db.Total(max(total.value, floor), total.estimated)
        return items, total, has_next

    async def update(self, experiment_id: int, patch: ExperimentPatch) -> ExperimentRow | None:
        """Apply a partial update atomically (row lock, merge, validate the merged ranges, write)."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchrow(
                "SELECT parameters, parameter_ranges FROM experiments WHERE id = $1 FOR UPDATE", experiment_id
            )
            if current is None:
                return None
            params = {**json.loads(current["parameters"]), **patch.parameters}
            stored = json.loads(current["parameter_ranges"]) if current["parameter_ranges"] else None
            ranges = patch.merged_ranges(stored)
            await conn.execute(
                """UPDATE experiments SET
                       name = coalesce($2, name),
                       description = coalesce($3, description),
                       type = coalesce($4, type),
                       model = coalesce($5, model),
                       prompt = coalesce($6, prompt),
                       status = coalesce($7, status),
                       parameters = $8::jsonb,
                       parameter_ranges = $9::jsonb,
                       response_count = coalesce($10, response_count),
                       tags = coalesce($11, tags),
                       favorited = coalesce($12, favorited),
                       archived = coalesce($13, archived),
                       updated_at = now()
                   WHERE id = $1""",
                experiment_id,
                patch.name,
                patch.description,
                patch.type,
                patch.model,
                patch.prompt,
                patch.status,
                json.dumps(params),
                json.dumps(ranges) if ranges else None,
                patch.response_count,
                patch.tags,
                patch.favorited,
                patch.archived,
            )
            return await self._get(conn, experiment_id)

    async def delete(self, experiment_id: int) -> bool:
        result = await self._pool.execute("DELETE FROM experiments WHERE id = $1", experiment_id)
        return result == "DELETE 1"

    async def bulk(self, action: BulkAction) -> tuple[list[int], list[int]]:
        """Apply one action to every listed experiment in one transaction: (affected ids, []) when all exist, else
        ([], missing ids) with nothing changed (the rows stay locked until then, so none vanishes in between)."""
        async with self._pool.acquire() as conn, conn.transaction():
            existing = [
                r["id"]
                for r in await conn.fetch(
                    "SELECT id FROM experiments WHERE id = ANY($1::int[]) ORDER BY id FOR UPDATE", action.ids
                )
            ]
            missing = sorted(set(action.ids) - set(existing))
            if missing:
                return [], missing
            if action.action == "delete":
                await conn.execute("DELETE FROM experiments WHERE id = ANY($1::int[])", existing)
            elif action.favorited is not None:
                await conn.execute(
                    "UPDATE experiments SET favorited = $2, updated_at = now() WHERE id = ANY($1::int[])",
                    existing,
                    action.favorited,
                )
            elif action.archived is not None:
                await conn.execute(
                    "UPDATE experiments SET archived = $2, updated_at = now() WHERE id = ANY($1::int[])",
                    existing,
                    action.archived,
                )
            else:
                await conn.execute(
                    """UPDATE experiments SET
                           tags = (SELECT coalesce(array_agg(t ORDER BY first_seen), '{}')
                                   FROM (SELECT t, min(o) AS first_seen
                                         FROM unnest(tags || $2::text[]) WITH ORDINALITY AS u(t, o)
                                         WHERE NOT (t = ANY($3::text[]))
                                         GROUP BY t) kept),
                           updated_at = now()
                       WHERE id = ANY($1::int[])""",
                    existing,
                    action.add_tags,
                    action.remove_tags,
                )
            return existing, []
