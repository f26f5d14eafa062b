"""Lab lists at scale, through the gateway, before and after the list indexes of experiments' migration 0004.

Loads N experiments (default 1,000,000) and M responses (default 10,000,000) with `generate_series` into a fresh
platform's schema (triggers and foreign-key checks off for the load; the per-experiment aggregates that the
responses_rollup trigger keeps are then computed in one statement, as the migration's backfill does), then
VACUUM ANALYZE, and times every lab list endpoint through Envoy with an admin key: p50/p95 of R requests
(default 20) each, one at a time, after one warm-up request per distinct path (at least 3).

"before": the code of this commit on the indexes that migration 0001 had (created_at, status, model, tags) — the
sort, search and filter indexes of 0004 dropped. "after": with them. The query shapes (deferred join, capped
counts, stored aggregates) are the same in both; the issue's own figures for the code before them are quoted in
docs/scale.md.
Usage: python -m bench.scale [--experiments 1000000] [--responses 10000000] [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
import uuid

import asyncpg

from bench._stack import KeepAliveClient, admin_key, percentile, running_platform

# One of the 1,000 owners of the loaded experiments (the load's md5('user-' || g % 1000) as a UUID).
OWNER = str(uuid.UUID(hashlib.md5(b"user-7").hexdigest()))
# The indexes migration 0004 adds beside what 0001 had; "before" drops these and restores 0001's.
NEW_INDEXES = ("experiments_created_at_idx", "experiments_updated_at_idx", "experiments_name_idx",
               "experiments_quality_desc_idx", "experiments_quality_asc_idx", "experiments_status_created_idx",
               "experiments_model_created_idx", "experiments_name_trgm_idx", "experiments_description_trgm_idx")
OLD_INDEXES = ("CREATE INDEX experiments_created_at_idx ON experiments (created_at DESC, id DESC)",
               "CREATE INDEX experiments_status_idx ON experiments (status)",
               "CREATE INDEX experiments_model_idx ON experiments (model)")

LOAD_EXPERIMENTS = """
INSERT INTO experiments (name, description, type, status, model, prompt, parameters, response_count, tags,
                         favorited, archived, created_at, updated_at, owner_id)
SELECT 'Experiment ' || substr(md5(g::text), 1, 12),
       'Parameter study ' || substr(md5((g * 7)::text), 1, 24),
       CASE WHEN g % 10 = 0 THEN 'batch' ELSE 'single' END,
       (ARRAY['draft', 'running', 'completed', 'failed'])[1 + g % 4],
       (ARRAY['gpt-4', 'gpt-3.5-turbo', 'claude-3', 'smollm2-135m-instruct', 'llama-3'])[1 + g % 5],
       'Write a short story about a lighthouse.', '{"temperature": 0.7, "top_p": 0.9}', 10,
       ARRAY['t' || (g % 100)], g % 97 = 0, g % 20 = 0,
       now() - make_interval(secs => g * 30), now() - make_interval(secs => g * 29),
       md5('user-' || (g % 1000))::uuid::text
FROM generate_series($1::bigint, $2::bigint) g
"""
LOAD_RESPONSES = """
INSERT INTO responses (experiment_id, content, model, parameters, quality_metrics, overall_quality,
                       response_time_ms, token_count, cost, status, created_at)
SELECT 1 + g % $3, 'Response ' || g || ': ' || substr(md5(g::text), 1, 20), '', '{"temperature": 0.7}',
       CASE WHEN g % 10 = 0 THEN NULL ELSE '{"coherence": 80, "creativity": 70}'::jsonb END,
       CASE WHEN g % 10 = 0 THEN NULL ELSE 40 + (g * 7919 % 600) / 10.0 END,
       200 + g % 3000, 64, 0.0001 * (g % 7),
       CASE WHEN g % 50 = 0 THEN 'failed' ELSE 'completed' END,
       now() - make_interval(secs => g * 3)
FROM generate_series($1::bigint, $2::bigint) g
"""
# Every batch-type experiment is a finished 4x4x3 sweep (docs/sweeps.md), so /api/batch-experiments lists 10 %.
LOAD_SWEEPS = """
INSERT INTO sweeps (experiment_id, status, priority, grid, combinations, responses_per_combination, created_at,
                    started_at, completed_at)
SELECT id, 'completed', 'normal', '{"temperature": {"min": 0.2, "max": 0.8, "step": 0.2}}', '[]', 3,
       created_at, created_at, created_at + interval '2 minutes'
FROM experiments WHERE type = 'batch'
"""
ROLLUP = """
UPDATE experiments e
SET generated = a.generated, cost_sum = a.cost_sum, duration_sum = a.duration_sum,
    quality_sum = a.quality_sum, quality_n = a.quality_n
FROM (SELECT experiment_id, count(*) AS generated, sum(cost::numeric) AS cost_sum,
             sum(response_time_ms) AS duration_sum, coalesce(sum(overall_quality::numeric), 0) AS quality_sum,
             count(overall_quality) AS quality_n
      FROM responses WHERE status = 'completed' GROUP BY experiment_id) a
WHERE e.id = a.experiment_id
"""


async def load(conn: asyncpg.Connection, experiments: int, responses: int) -> None:
    started = time.perf_counter()
    # The load skips triggers and foreign-key checks (replica role) and builds indexes once at the end.
    await conn.execute("SET session_replication_role = replica")
    await conn.execute("SET synchronous_commit = off")
    await conn.execute("SET maintenance_work_mem = '512MB'")
    defs = await conn.fetch(
        """SELECT indexname, indexdef FROM pg_indexes
           WHERE schemaname = current_schema() AND tablename IN ('experiments', 'responses', 'sweeps')
             AND indexname NOT LIKE '%pkey' AND indexname NOT LIKE '%uuid_key'""")
    for d in defs:
        await conn.execute(f'DROP INDEX "{d["indexname"]}"')
    step = 1_000_000
    for lo in range(1, experiments + 1, step):
        await conn.execute(LOAD_EXPERIMENTS, lo, min(experiments, lo + step - 1))
    for lo in range(1, responses + 1, step):
        await conn.execute(LOAD_RESPONSES, lo, min(responses, lo + step - 1), experiments)
        print(f"  loaded {min(responses, lo + step - 1):,} responses ({time.perf_counter() - started:.0f} s)",
              flush=True)
    await conn.execute(LOAD_SWEEPS)
    await conn.execute(ROLLUP)
    for d in defs:
        await conn.execute(d["indexdef"])
    await conn.execute("RESET session_replication_role")
    await conn.execute("VACUUM ANALYZE experiments")
    await conn.execute("VACUUM ANALYZE responses")
    await conn.execute("VACUUM ANALYZE sweeps")
    print(f"loaded {experiments:,} experiments and {responses:,} responses in {time.perf_counter() - started:.0f} s",
          flush=True)


def requests(experiments: int, cursor: str) -> list[tuple[str, list[str]]]:
    """(label, paths): each label's requests cycle over its paths (different ids and terms, not one cached row);
    `cursor` is the research list's end_cursor after its first page."""
    ids = [1 + (i * 7919) % experiments for i in range(10)]
    deep = max(1, min(5000, experiments // 20 // 2))
    return [
        ("GET /api/experiments/{id}", [f"/api/experiments/{i}" for i in ids]),
        ("experiments ?limit=20", ["/api/experiments?limit=20"]),
        (f"experiments ?limit=20&page={deep}", [f"/api/experiments?limit=20&page={deep}"]),
        ("experiments ?search=<4 chars>&limit=20",
         [f"/api/experiments?search={t}&limit=20" for t in ("ab12", "c0ff", "9e1d", "77aa")]),
        ("experiments ?status=completed&model=gpt-4",
         ["/api/experiments?status=completed&model=gpt-4&limit=20"]),
        ("experiments ?sort_by=name&sort_order=asc", ["/api/experiments?sort_by=name&sort_order=asc&limit=20"]),
        ("experiments ?sort_by=quality", ["/api/experiments?sort_by=quality&limit=20"]),
        ("experiments ?type=batch&archived=true", ["/api/experiments?type=batch&archived=true&limit=20"]),
        ("history ?view_mode=timeline&limit=20", ["/api/experiments/history?view_mode=timeline&limit=20"]),
        ("history ?favorited=true&search=Exp", ["/api/experiments/history?favorited=true&search=Exp&limit=20"]),
        ("batch-experiments ?limit=20", ["/api/batch-experiments?limit=20"]),
        ("batch-experiments ?status=completed&page=100", ["/api/batch-experiments?status=completed&page=100"]),
        ("research /experiments?limit=20", ["/experiments?limit=20"]),
        ("research /experiments?limit=20&offset=100000", ["/experiments?limit=20&offset=100000"]),
        ("research /experiments?after=<cursor>", [f"/experiments?limit=20&after={cursor}"]),
        ("research /experiments?status=completed", ["/experiments?status=completed&limit=20"]),
        ("research /experiments?owner_id=<uuid>", [f"/experiments?owner_id={OWNER}&limit=20"]),
        ("research /experiments?tags=t7", ["/experiments?tags=t7&limit=20"]),
        ("responses/{experiment_id}", [f"/api/responses/{i}?limit=20" for i in ids]),
        ("responses/comparison ?limit=20", ["/api/responses/comparison?limit=20"]),
        ("responses/comparison ?quality_min=90&sort_by=quality",
         ["/api/responses/comparison?quality_min=90&sort_by=quality&limit=20"]),
        ("responses/comparison ?models=gpt-4", ["/api/responses/comparison?models=gpt-4&limit=20"]),
        ("responses/comparison ?tags=t7", ["/api/responses/comparison?tags=t7&limit=20"]),
    ]


async def measure(client: KeepAliveClient, paths: list[str], n: int) -> tuple[float, float]:
    """Warm: each distinct path is requested once (at least 3 requests) before the n timed ones."""
    warm = max(3, len(paths))
    times = []
    for i in range(n + warm):
        path = paths[i % len(paths)]
        started = time.perf_counter()
        status, body = await client.get(path)
        elapsed = (time.perf_counter() - started) * 1000
        if status != 200:
            raise RuntimeError(f"{path}: {status} {body[:300]!r}")
        if i >= warm:
            times.append(elapsed)
    return percentile(times, 50), percentile(times, 95)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", type=int, default=1_000_000)
    parser.add_argument("--responses", type=int, default=10_000_000)
    parser.add_argument("--requests", type=int, default=20)
    args = parser.parse_args()
    async with running_platform() as cfg:
        key = await admin_key(cfg)
        conn = await asyncpg.connect(cfg.database_url, command_timeout=3600)
        await conn.execute(f'SET search_path TO "{cfg.env["LLMLAB_EXPERIMENTS_DB_SCHEMA"]}", public')
        client = KeepAliveClient(cfg.gateway_port, {"authorization": f"Bearer {key}"})
        try:
            await load(conn, args.experiments, args.responses)
            status, body = await client.get("/experiments?limit=20")
            cursor = json.loads(body)["page_info"]["end_cursor"] if status == 200 else ""
            after = {label: await measure(client, paths, args.requests)
                     for label, paths in requests(args.experiments, cursor)}
            defs = await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()"
                                    " AND indexname = ANY($1::text[])", list(NEW_INDEXES))
            for d in defs:
                await conn.execute(f'DROP INDEX "{d["indexname"]}"')
            for sql in OLD_INDEXES:
                await conn.execute(sql)
            await conn.execute("ANALYZE experiments")
            before = {label: await measure(client, paths, args.requests)
                      for label, paths in requests(args.experiments, cursor)}
        finally:
            client.close()
            await conn.close()
    print(f"\n{args.experiments:,} experiments, {args.responses:,} responses; {args.requests} requests each, "
          "through Envoy; ms")
    print(f"{'request':<50} {'before p50':>10} {'p95':>8} {'after p50':>10} {'p95':>8}")
    for label, (a50, a95) in after.items():
        b50, b95 = before[label]
        print(f"{label:<50} {b50:>10.1f} {b95:>8.1f} {a50:>10.1f} {a95:>8.1f}")
    worst = max(a95 for _, a95 in after.values())
    print(f"worst p95 after: {worst:.1f} ms (target <= 50 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
