"""The event consumer's write side: a batch of stream messages applied to the read model in one transaction."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import asyncpg

from llmlab.runtime.streams import StreamMessage

from . import readmodel as rm
from .webhooks.delivery import fan_out_events

# Held shared by every batch and exclusively by a rebuild, so that no batch lands while the model is rebuilt.
REBUILD_LOCK = "llmlab.analytics.rebuild"


@dataclass(frozen=True)
class Applied:
    """The messages of a batch that were new (not applied before)."""

    messages: list[tuple[str, StreamMessage]]


OnApplied = Callable[[Applied], Awaitable[None]]


def _fact(r: asyncpg.Record) -> rm.Fact:
    return rm.Fact(
        response_id=r["response_id"], experiment_id=r["experiment_id"], experiment_type=r["experiment_type"],
        model=r["model"], principal=r["principal"],
        parameters=json.loads(r["parameters"]) if r["parameters"] else None, cost=r["cost"],
        response_time_ms=r["response_time_ms"], created_at=r["created_at"],
        metrics=json.loads(r["metrics"]) if r["metrics"] else None,
        counted=json.loads(r["counted"]) if r["counted"] else None,
    )


def _json(v: object) -> str | None:
    return None if v is None else json.dumps(v)


class Projector:
    """Applies events to the analytics schema; idempotent per (stream, message id)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def apply(self, stream: str, messages: Sequence[StreamMessage]) -> Applied:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext($1))", REBUILD_LOCK)
            return await apply_batch(conn, stream, messages)


async def apply_batch(conn: asyncpg.Connection, stream: str, messages: Sequence[StreamMessage]) -> Applied:
    """Apply the messages not applied before, inside the caller's transaction."""
    ids = list(dict.fromkeys(m.id for m in messages))
    fresh_rows = await conn.fetch(
        "INSERT INTO processed_events (stream, event_id) SELECT $1, unnest($2::text[]) "
        "ON CONFLICT DO NOTHING RETURNING event_id", stream, ids)
    fresh = {r["event_id"] for r in fresh_rows}
    todo = []
    for m in messages:
        if m.id in fresh:
            fresh.discard(m.id)
            todo.append(m)
    if not todo:
        return Applied([])
    response_ids = sorted({int(m.data["response_id"]) for m in todo
                           if m.type.startswith("response.") and m.data.get("response_id") is not None})
    facts: dict[int, rm.Fact] = {}
    if response_ids:
        rows = await conn.fetch("SELECT * FROM responses WHERE response_id = ANY($1::bigint[]) ORDER BY response_id "
                                "FOR UPDATE", response_ids)
        facts = {r["response_id"]: _fact(r) for r in rows}
    d = rm.Deltas()
    for m in todo:
        when = rm.at(m.published_at)
        t = m.type
        if t in ("response.created", "response.scored") and m.data.get("response_id") is not None:
            rid = int(m.data["response_id"])
            fact = facts.setdefault(rid, rm.Fact(rid))
            if t == "response.created":
                rm.response_created(fact, m.data, when, d)
            else:
                rm.response_scored(fact, m.data, d)
        elif t == "response.failed":
            rm.response_failed(m.data, when, d)
        elif t == "usage.recorded":
            rm.usage_recorded(m.data, when, d)
        elif t.startswith("experiment.") or t.startswith("batch_experiment."):
            rm.experiment_event(t, m.data, when, (stream, m.id), d)
        else:
            rm.job_event(t, m.data, when, d)
    await _write(conn, facts, d)
    await fan_out_events(conn, stream, todo)
    return Applied([(stream, m) for m in todo])


async def _write(conn: asyncpg.Connection, facts: dict[int, rm.Fact], d: rm.Deltas) -> None:
    dirty = [f for _, f in sorted(facts.items()) if f.dirty]
    if dirty:
        await conn.executemany(
            """INSERT INTO responses (response_id, experiment_id, experiment_type, model, principal, parameters, cost,
                   response_time_ms, created_at, metrics, counted)
               VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9, $10::jsonb, $11::jsonb)
               ON CONFLICT (response_id) DO UPDATE SET experiment_id = EXCLUDED.experiment_id,
                   experiment_type = EXCLUDED.experiment_type, model = EXCLUDED.model, principal = EXCLUDED.principal,
                   parameters = EXCLUDED.parameters, cost = EXCLUDED.cost,
                   response_time_ms = EXCLUDED.response_time_ms, created_at = EXCLUDED.created_at,
                   metrics = EXCLUDED.metrics, counted = EXCLUDED.counted""",
            [(f.response_id, f.experiment_id, f.experiment_type, f.model, f.principal, _json(f.parameters), f.cost,
              f.response_time_ms, f.created_at, _json(f.metrics), _json(f.counted)) for f in dirty])
    # Keys are written in sorted order so that concurrent consumers lock rollup rows in one order (no deadlocks).
    if d.daily_model:
        await conn.executemany(
            """INSERT INTO daily_model AS t (day, model, experiment_type, responses, failures, cost, time_ms, scored,
                   quality_sum) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (day, model, experiment_type) DO UPDATE SET responses = t.responses + EXCLUDED.responses,
                   failures = t.failures + EXCLUDED.failures, cost = t.cost + EXCLUDED.cost,
                   time_ms = t.time_ms + EXCLUDED.time_ms, scored = t.scored + EXCLUDED.scored,
                   quality_sum = t.quality_sum + EXCLUDED.quality_sum""",
            [(*k, int(v[0]), int(v[1]), v[2], v[3], int(v[4]), v[5]) for k, v in sorted(d.daily_model.items())])
    if d.daily_experiments:
        await conn.executemany(
            "INSERT INTO daily_experiments VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            sorted(d.daily_experiments))
    if d.daily_combos:
        await conn.executemany(
            """INSERT INTO daily_combos AS t (day, model, experiment_type, temperature, top_p, max_tokens,
                   frequency_penalty, presence_penalty, responses, cost, time_ms, scored, quality_sum, quality_sq,
                   creativity_sum) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
               ON CONFLICT (day, model, experiment_type, temperature, top_p, max_tokens, frequency_penalty,
                   presence_penalty) DO UPDATE SET responses = t.responses + EXCLUDED.responses,
                   cost = t.cost + EXCLUDED.cost, time_ms = t.time_ms + EXCLUDED.time_ms,
                   scored = t.scored + EXCLUDED.scored, quality_sum = t.quality_sum + EXCLUDED.quality_sum,
                   quality_sq = t.quality_sq + EXCLUDED.quality_sq,
                   creativity_sum = t.creativity_sum + EXCLUDED.creativity_sum""",
            [(*k, int(v[0]), v[1], v[2], int(v[3]), v[4], v[5], v[6]) for k, v in sorted(d.daily_combos.items())])
    totals: dict[tuple, list[float]] = defaultdict(lambda: [0.0] * 8)
    for (_day, model, _type, *combo), v in d.daily_combos.items():
        t = totals[(model, *combo)]
        for i in range(7):
            t[i] += v[i]
    if d.combo_experiments:
        cols = list(zip(*sorted(d.combo_experiments), strict=True))
        new = await conn.fetch(
            """INSERT INTO combo_experiments SELECT * FROM unnest($1::text[], $2::float8[], $3::float8[],
                   $4::int[], $5::float8[], $6::float8[], $7::bigint[]) ON CONFLICT DO NOTHING
               RETURNING model, temperature, top_p, max_tokens, frequency_penalty, presence_penalty""",
            *[list(c) for c in cols])
        for r in new:
            totals[tuple(r.values())][7] += 1
    if totals:
        await conn.executemany(
            """INSERT INTO combo_totals AS t (model, temperature, top_p, max_tokens, frequency_penalty,
                   presence_penalty, responses, cost, time_ms, scored, quality_sum, quality_sq, creativity_sum,
                   experiments) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
               ON CONFLICT (model, temperature, top_p, max_tokens, frequency_penalty, presence_penalty) DO UPDATE
               SET responses = t.responses + EXCLUDED.responses, cost = t.cost + EXCLUDED.cost,
                   time_ms = t.time_ms + EXCLUDED.time_ms, scored = t.scored + EXCLUDED.scored,
                   quality_sum = t.quality_sum + EXCLUDED.quality_sum, quality_sq = t.quality_sq + EXCLUDED.quality_sq,
                   creativity_sum = t.creativity_sum + EXCLUDED.creativity_sum,
                   experiments = t.experiments + EXCLUDED.experiments""",
            [(*k, int(v[0]), v[1], v[2], int(v[3]), v[4], v[5], v[6], int(v[7])) for k, v in sorted(totals.items())])
    if d.daily_pairs:
        await conn.executemany(
            """INSERT INTO daily_pairs AS t (day, model, experiment_type, x, y, n, sx, sy, sxx, syy, sxy)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
               ON CONFLICT (day, model, experiment_type, x, y) DO UPDATE SET n = t.n + EXCLUDED.n,
                   sx = t.sx + EXCLUDED.sx, sy = t.sy + EXCLUDED.sy, sxx = t.sxx + EXCLUDED.sxx,
                   syy = t.syy + EXCLUDED.syy, sxy = t.sxy + EXCLUDED.sxy""",
            [(*k, int(v[0]), *v[1:]) for k, v in sorted(d.daily_pairs.items())])
        pairs: dict[tuple, list[float]] = defaultdict(lambda: [0.0] * 6)
        for (_day, model, _type, x, y), v in d.daily_pairs.items():
            t = pairs[(model, x, y)]
            for i in range(6):
                t[i] += v[i]
        await conn.executemany(
            """INSERT INTO pair_totals AS t (model, x, y, n, sx, sy, sxx, syy, sxy)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (model, x, y) DO UPDATE SET n = t.n + EXCLUDED.n, sx = t.sx + EXCLUDED.sx,
                   sy = t.sy + EXCLUDED.sy, sxx = t.sxx + EXCLUDED.sxx, syy = t.syy + EXCLUDED.syy,
                   sxy = t.sxy + EXCLUDED.sxy""",
            [(*k, int(v[0]), *v[1:]) for k, v in sorted(pairs.items())])
    if d.usage_hourly:
        await conn.executemany(
            """INSERT INTO usage_hourly AS t (hour, user_id, key_id, model, requests, prompt_tokens,
                   completion_tokens, cost, latency_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (hour, user_id, key_id, model) DO UPDATE SET requests = t.requests + EXCLUDED.requests,
                   prompt_tokens = t.prompt_tokens + EXCLUDED.prompt_tokens,
                   completion_tokens = t.completion_tokens + EXCLUDED.completion_tokens,
                   cost = t.cost + EXCLUDED.cost, latency_ms = t.latency_ms + EXCLUDED.latency_ms""",
            [(*k, int(v[0]), int(v[1]), int(v[2]), v[3], v[4]) for k, v in sorted(d.usage_hourly.items())])
    if d.usage_latency:
        await conn.executemany(
            """INSERT INTO usage_latency AS t (hour, user_id, model, bin, count) VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (hour, user_id, model, bin) DO UPDATE SET count = t.count + EXCLUDED.count""",
            [(*k, v) for k, v in sorted(d.usage_latency.items())])
    if d.failure_minutes:
        await conn.executemany(
            """INSERT INTO failure_minutes AS t (minute, failures) VALUES ($1, $2)
               ON CONFLICT (minute) DO UPDATE SET failures = t.failures + EXCLUDED.failures""",
            sorted(d.failure_minutes.items()))
    for eid, row in sorted(d.experiments.items()):
        await conn.execute(
            """INSERT INTO experiments AS t (experiment_id, name, type, model, principal, status, created_at,
                   updated_at) VALUES ($1, coalesce($2, ''), coalesce($3, 'single'), coalesce($4, ''),
                   coalesce($5, ''), coalesce($6, 'draft'), $7, $8)
               ON CONFLICT (experiment_id) DO UPDATE SET name = coalesce($2, t.name), type = coalesce($3, t.type),
                   model = coalesce($4, t.model), principal = coalesce($5, t.principal),
                   status = CASE WHEN $6 IS NULL OR t.updated_at > $8 THEN t.status ELSE $6 END,
                   created_at = coalesce(t.created_at, $7), updated_at = greatest(t.updated_at, $8)""",
            eid, row.get("name"), row.get("type"), row.get("model"), row.get("principal"), row.get("status"),
            row.get("created_at"), row.get("updated_at"))
    if d.activity:
        await conn.executemany(
            """INSERT INTO activity (stream, event_id, type, experiment_id, name, model, experiment_type, quality, at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING""",
            [(a["stream"], a["event_id"], a["type"], a["experiment_id"], a["name"], a["model"],
              a["experiment_type"], a["quality"], a["at"]) for a in d.activity])
    if d.jobs:
        await conn.executemany(
            """INSERT INTO jobs AS t (kind, job_id, status, updated_at) VALUES ($1, $2, $3, $4)
               ON CONFLICT (kind, job_id) DO UPDATE SET status = EXCLUDED.status, updated_at = EXCLUDED.updated_at
               WHERE t.updated_at <= EXCLUDED.updated_at""",
            [(*k, *v) for k, v in sorted(d.jobs.items())])
