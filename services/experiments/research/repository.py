"""All SQL of the research view (experiments as seed-001 clients see them, their runs and outputs, prompt templates)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import asyncpg

from llmlab.runtime import db

from .domain import NewResearchExperiment, ResearchListQuery
from .templates import NewTemplate

_EXP = """e.id, e.uuid, e.name, e.description, e.hypothesis, e.owner_id, e.collaborators, e.tags, e.status,
          e.config, e.parameters, e.parameter_ranges, e.prompt, e.response_count, e.model, e.metadata,
          e.created_at, e.updated_at, e.archived_at, e.started_at"""
_RUN = """r.id, e.uuid AS experiment_uuid, r.experiment_id, r.status, r.config, r.principal, r.executed, r.attempt,
          r.total, r.done, r.failed, r.outputs, r.error, r.started_at, r.completed_at"""


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


@dataclass
class ResearchRow:
    seq: int
    id: str
    name: str
    description: str
    hypothesis: str
    owner_id: str
    collaborators: list[str]
    tags: list[str]
    status: str
    config: dict[str, Any]
    created_at: Any
    updated_at: Any
    archived_at: Any
    started_at: Any
    metadata: dict[str, Any]

    @classmethod
    def of(cls, r: asyncpg.Record) -> ResearchRow:
        config = dict(_json(r["config"]) or {})
        # The lab columns in their research names (one store, two views: the proto's ResearchExperiment).
        config["parameters"] = _json(r["parameters"]) or {}
        if r["prompt"]:
            config["prompt"] = r["prompt"]
            config["response_count"] = r["response_count"]
        if r["parameter_ranges"]:
            config["parameter_ranges"] = _json(r["parameter_ranges"])
        return cls(r["id"], str(r["uuid"]), r["name"], r["description"], r["hypothesis"], r["owner_id"] or "",
                   list(r["collaborators"]), list(r["tags"]), r["status"], config, r["created_at"],
                   r["updated_at"], r["archived_at"], r["started_at"], _json(r["metadata"]) or {})


@dataclass
class RunRow:
    id: str
    experiment_id: str
    experiment_seq: int
    status: str
    config: dict[str, Any]
    principal: str
    executed: bool
    attempt: int
    total: int
    done: int
    failed: int
    outputs: dict[str, Any] | None
    error: str | None
    started_at: Any
    completed_at: Any

    @classmethod
    def of(cls, r: asyncpg.Record) -> RunRow:
        return cls(str(r["id"]), str(r["experiment_uuid"]), r["experiment_id"], r["status"], _json(r["config"]),
                   r["principal"], r["executed"], r["attempt"], r["total"], r["done"], r["failed"],
                   _json(r["outputs"]), r["error"], r["started_at"], r["completed_at"])


@dataclass
class OutputRow:
    sample_key: str
    model_id: str
    template_id: str
    row_index: int
    output: str
    reference: str | None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    error: str | None


@dataclass
class TemplateRow:
    seq: int
    id: str
    name: str
    description: str
    template: str
    variables: list[str]
    default_values: dict[str, Any]
    tags: list[str]
    metadata: dict[str, Any]
    created_at: Any
    updated_at: Any

    @classmethod
    def of(cls, r: asyncpg.Record) -> TemplateRow:
        return cls(r["seq"], str(r["id"]), r["name"], r["description"], r["template"], list(r["variables"]),
                   _json(r["default_values"]), list(r["tags"]), _json(r["metadata"]), r["created_at"],
                   r["updated_at"])


def _split_config(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """(research-only config keys, parameters, parameter_ranges): the lab keys live in their lab columns."""
    rest = {k: v for k, v in config.items()
            if k not in ("parameters", "prompt", "parameter_ranges", "response_count")}
    return rest, dict(config.get("parameters") or {}), config.get("parameter_ranges")


class ResearchRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # ---- experiments

    async def create(self, e: NewResearchExperiment, model_slug: str) -> tuple[ResearchRow | None, str | None]:
        """(the new row, None), or (None, the existing id) when the owner already has an experiment of that name.
        An advisory lock per (owner, name) makes the check and the insert one step under concurrent requests."""
        rest, params, ranges = _split_config(e.config)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", f"{e.owner_id}\x1f{e.name}")
            existing = await conn.fetchval(
                "SELECT uuid FROM experiments WHERE owner_id = $1 AND name = $2 LIMIT 1", e.owner_id, e.name)
            if existing is not None:
                return None, str(existing)
            seq = await conn.fetchval(
                """INSERT INTO experiments (name, description, hypothesis, owner_id, collaborators, tags, config,
                                            parameters, parameter_ranges, model, prompt, metadata)
                   VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9::jsonb, $10, $11, $12::jsonb)
                   RETURNING id""",
                e.name, e.description, e.hypothesis, e.owner_id, e.collaborators, e.tags, json.dumps(rest),
                json.dumps(params), json.dumps(ranges) if ranges else None, model_slug,
                str(e.config.get("prompt") or ""), json.dumps(e.metadata))
            return await self._get(conn, "e.id = $1", seq), None

    async def _get(self, conn: Any, where: str, *args: Any) -> ResearchRow | None:
        r = await conn.fetchrow(f"SELECT {_EXP} FROM experiments e WHERE {where}", *args)
        return ResearchRow.of(r) if r else None

    async def get(self, experiment_id: str) -> ResearchRow | None:
        return await self._get(self._pool, "e.uuid = $1::uuid", experiment_id)

    async def list(self, q: ResearchListQuery) -> tuple[list[ResearchRow], db.Total | None, bool]:
        """(page, total or None in cursor mode, has_more). Newest first: (created_at, id) descending. The page's
        ids come from the created_at index, then only its rows are read; the total is exact up to
        db.EXACT_COUNT_CAP, else the planner's estimate (docs/scale.md)."""
        clauses, args = [], []

        def arg(v: Any) -> str:
            args.append(v)
            return f"${len(args)}"

        if q.status:
            clauses.append(f"e.status = {arg(q.status)}")
        if q.owner_id:
            clauses.append(f"e.owner_id = {arg(q.owner_id)}")
        if q.tags:
            clauses.append(f"e.tags @> {arg(q.tags)}::text[]")
        filters = list(clauses)
        if q.after:
            clauses.append(f"(e.created_at, e.id) < ({arg(q.after[0])}, {arg(q.after[1])})")
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "e.created_at DESC, e.id DESC"
        sql = (f"WITH page AS MATERIALIZED (SELECT e.id FROM experiments e {where} ORDER BY {order} "
               f"LIMIT {q.limit + 1} OFFSET {int(q.offset or 0)}) "
               f"SELECT {_EXP} FROM page JOIN experiments e ON e.id = page.id ORDER BY {order}")
        async with self._pool.acquire() as conn:
            rows = [ResearchRow.of(r) for r in await conn.fetch(sql, *args)]
            total = None
            if q.after is None:
                fw = ("WHERE " + " AND ".join(filters)) if filters else ""
                total = await db.count_capped(conn, f"FROM experiments e {fw}", args[:len(filters)])
                floor = int(q.offset or 0) + min(len(rows), q.limit) + int(len(rows) > q.limit)
                if total.estimated or len(rows) > q.limit:
                    total = db.Total(max(total.value, floor), total.estimated)
        return rows[:q.limit], total, len(rows) > q.limit

    async def update(self, experiment_id: str, changes: dict[str, Any],
                     model_slug: str | None) -> tuple[ResearchRow | None, str | None]:
        """Apply the changes; (row, None), (None, existing id) on a name conflict, (None, None) when missing."""
        async with self._pool.acquire() as conn, conn.transaction():
            cur = await conn.fetchrow("SELECT id, owner_id, name FROM experiments WHERE uuid = $1::uuid FOR UPDATE",
                                      experiment_id)
            if cur is None:
                return None, None
            if "name" in changes and changes["name"] != cur["name"]:
                owner = cur["owner_id"] or ""
                await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))",
                                   f"{owner}\x1f{changes['name']}")
                other = await conn.fetchval("SELECT uuid FROM experiments WHERE owner_id = $1 AND name = $2 "
                                            "AND id <> $3 LIMIT 1", owner, changes["name"], cur["id"])
                if other is not None:
                    return None, str(other)
            sets, args = [], [cur["id"]]

            def put(column: str, v: Any, cast: str = "") -> None:
                args.append(v)
                sets.append(f"{column} = ${len(args)}{cast}")

            for column in ("name", "description", "hypothesis", "collaborators", "tags"):
                if column in changes:
                    put(column, changes[column])
            if "metadata" in changes:
                put("metadata", json.dumps(changes["metadata"]), "::jsonb")
            if "config" in changes:
                rest, params, ranges = _split_config(changes["config"])
                put("config", json.dumps(rest), "::jsonb")
                put("parameters", json.dumps(params), "::jsonb")
                if "parameter_ranges" in changes["config"]:
                    put("parameter_ranges", json.dumps(ranges) if ranges else None, "::jsonb")
                if "prompt" in changes["config"]:
                    put("prompt", str(changes["config"]["prompt"] or ""))
                if model_slug is not None:
                    put("model", model_slug)
            sets.append("updated_at = now()")
            await conn.execute(f"UPDATE experiments SET {', '.join(sets)} WHERE id = $1", *args)
            return await self._get(conn, "e.id = $1", cur["id"]), None

    async def delete(self, experiment_id: str) -> bool:
        return await self._pool.execute("DELETE FROM experiments WHERE uuid = $1::uuid", experiment_id) == "DELETE 1"

    async def start(self, experiment_id: str) -> ResearchRow | None:
        """draft -> running with started_at; None when it was not a draft any more (raced)."""
        changed = await self._pool.execute(
            "UPDATE experiments SET status = 'running', started_at = now(), updated_at = now() "
            "WHERE uuid = $1::uuid AND status = 'draft'", experiment_id)
        return await self.get(experiment_id) if changed == "UPDATE 1" else None

    # ---- runs

    async def create_run(self, experiment_seq: int, config: dict[str, Any], principal: str,
                         executed: bool) -> RunRow:
        async with self._pool.acquire() as conn:
            run_id = await conn.fetchval(
                "INSERT INTO experiment_runs (experiment_id, config, principal, executed) "
                "VALUES ($1, $2::jsonb, $3, $4) RETURNING id", experiment_seq, json.dumps(config), principal, executed)
            return await self._run(conn, "r.id = $1", run_id)  # type: ignore[return-value]

    async def _run(self, conn: Any, where: str, *args: Any) -> RunRow | None:
        r = await conn.fetchrow(f"SELECT {_RUN} FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
                                f"WHERE {where}", *args)
        return RunRow.of(r) if r else None

    async def get_run(self, experiment_id: str, run_id: str) -> RunRow | None:
        return await self._run(self._pool, "r.id = $1::uuid AND e.uuid = $2::uuid", run_id, experiment_id)

    async def run_by_id(self, run_id: str) -> RunRow | None:
        return await self._run(self._pool, "r.id = $1::uuid", run_id)

    async def list_runs(self, experiment_seq: int, limit: int, offset: int) -> tuple[list[RunRow], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_RUN} FROM experiment_runs r JOIN experiments e ON e.id = r.experiment_id "
                f"WHERE r.experiment_id = $1 ORDER BY r.started_at DESC, r.id DESC LIMIT $2 OFFSET $3",
                experiment_seq, limit, offset)
            total = await conn.fetchval("SELECT count(*) FROM experiment_runs WHERE experiment_id = $1",
                                        experiment_seq)
        return [RunRow.of(r) for r in rows], total

    async def finish_run(self, run_id: str, status: str, error: str | None = None,
                         outputs: dict[str, Any] | None = None, attempt: int | None = None) -> RunRow | None:
        """pending/running -> completed/failed; None when the run had already ended (or another attempt owns it)."""
        async with self._pool.acquire() as conn:
            done = await conn.execute(
                "UPDATE experiment_runs SET status = $2, error = $3, outputs = $4::jsonb, completed_at = now() "
                "WHERE id = $1::uuid AND status IN ('pending', 'running') AND ($5::int IS NULL OR attempt = $5)",
                run_id, status, error, json.dumps(outputs) if outputs is not None else None, attempt)
            return await self._run(conn, "r.id = $1::uuid", run_id) if done == "UPDATE 1" else None

    async def claim_run(self, run_id: str, stale_seconds: float) -> RunRow | None:
        """pending, or running without a heartbeat for stale_seconds (its worker died) -> running under a new
        attempt; None when it ended, vanished, or a live worker holds it."""
        async with self._pool.acquire() as conn:
            n = await conn.execute(
                "UPDATE experiment_runs SET status = 'running', attempt = attempt + 1, heartbeat_at = now() "
                "WHERE id = $1::uuid AND executed AND (status = 'pending' OR (status = 'running' AND "
                "(heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => $2))))",
                run_id, stale_seconds)
            return await self._run(conn, "r.id = $1::uuid", run_id) if n == "UPDATE 1" else None

    async def heartbeat(self, run_id: str, attempt: int) -> None:
        await self._pool.execute("UPDATE experiment_runs SET heartbeat_at = now() WHERE id = $1::uuid "
                                 "AND attempt = $2 AND status = 'running'", run_id, attempt)

    async def heartbeat_expire(self, run_id: str, attempt: int) -> None:
        """Let the next delivery of a failed attempt claim the run at once."""
        await self._pool.execute("UPDATE experiment_runs SET heartbeat_at = NULL WHERE id = $1::uuid "
                                 "AND attempt = $2 AND status = 'running'", run_id, attempt)

    async def set_total(self, run_id: str, total: int) -> None:
        await self._pool.execute("UPDATE experiment_runs SET total = $2 WHERE id = $1::uuid", run_id, total)

    async def pending_runs(self) -> list[str]:
        rows = await self._pool.fetch("SELECT id FROM experiment_runs WHERE executed AND status = 'pending' "
                                      "ORDER BY started_at")
        return [str(r["id"]) for r in rows]

    async def outputs(self, run_id: str) -> list[OutputRow]:
        rows = await self._pool.fetch(
            """SELECT sample_key, model_id, template_id, row_index, output, reference, latency_ms, prompt_tokens,
                      completion_tokens, cost_usd, error
               FROM experiment_run_outputs WHERE run_id = $1::uuid ORDER BY model_id, template_id, row_index""", run_id)
        return [OutputRow(**dict(r)) for r in rows]

    async def add_output(self, run_id: str, o: OutputRow, prompt: str) -> bool:
        """Store one generation once (a resumed attempt's duplicate is ignored) and count it on the run."""
        async with self._pool.acquire() as conn, conn.transaction():
            n = await conn.execute(
                """INSERT INTO experiment_run_outputs (run_id, sample_key, model_id, template_id, row_index, prompt,
                       output, reference, latency_ms, prompt_tokens, completion_tokens, cost_usd, error)
                   VALUES ($1::uuid, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
                   ON CONFLICT (run_id, sample_key) DO NOTHING""",
                run_id, o.sample_key, o.model_id, o.template_id, o.row_index, prompt, o.output, o.reference,
                o.latency_ms, o.prompt_tokens, o.completion_tokens, o.cost_usd, o.error)
            if n != "INSERT 0 1":
                return False
            await conn.execute(
                "UPDATE experiment_runs SET done = done + 1, failed = failed + $2, heartbeat_at = now() "
                "WHERE id = $1::uuid", run_id, 1 if o.error else 0)
            return True

    # ---- prompt templates

    async def create_template(self, t: NewTemplate, owner: str | None) -> TemplateRow:
        r = await self._pool.fetchrow(
            """INSERT INTO prompt_templates (owner_id, name, description, template, variables, default_values, tags,
                                             metadata)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8::jsonb) RETURNING *""",
            owner, t.name, t.description, t.template, t.variables, json.dumps(t.default_values), t.tags,
            json.dumps(t.metadata))
        return TemplateRow.of(r)

    async def get_template(self, template_id: str) -> TemplateRow | None:
        r = await self._pool.fetchrow("SELECT * FROM prompt_templates WHERE id = $1::uuid", template_id)
        return TemplateRow.of(r) if r else None

    async def list_templates(self, limit: int, offset: int) -> tuple[list[TemplateRow], int]:
        rows = await self._pool.fetch("SELECT * FROM prompt_templates ORDER BY created_at DESC, seq DESC "
                                      "LIMIT $1 OFFSET $2", limit, offset)
        total = await self._pool.fetchval("SELECT count(*) FROM prompt_templates")
        return [TemplateRow.of(r) for r in rows], total
