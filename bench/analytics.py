"""Analytics at scale: python -m bench.analytics [--responses 1000000] [--events 30000] [--repeat 40].

1. Consumer throughput: `--events` events (a third each response.created, response.scored, usage.recorded) are
   put on the streams first, then the analytics service starts and its consumers drain them through the real
   projection; events/s = events / time to apply them all (target >= 5,000/s).
2. Query latency: `--responses` scored responses (and as many usage events) over 90 days, 5 models, a 15 x 10 x 4
   parameter grid and 10,000 experiments of 100 responses (each experiment on one model and one day, sweeping
   the grid, as the lab runs them) are loaded into the read model in bulk, as the projection's sums computed
   by SQL (the queries read only the rollups, so their size is what matters); then the dashboard, optimisation,
   correlations and /v1/usage RPCs are timed over gRPC on the service itself (target p95 <= 100 ms each).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid

import asyncpg
import grpc
import redis.asyncio as redis

from llmlab.analytics.v1 import analytics_service_pb2 as apb
from llmlab.analytics.v1 import analytics_service_pb2_grpc as apb_grpc
from llmlab.analytics.v1 import usage_service_pb2 as upb
from llmlab.analytics.v1 import usage_service_pb2_grpc as upb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.logs import configure_logging
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import stream_key
from services.analytics.app import SPEC
from services.analytics.readmodel import GAMMA, METRICS, OUTCOMES, PARAMETERS
from services.analytics.rebuild import TABLES

TARGET_P95_MS = 100.0
TARGET_EVENTS_PER_S = 5000.0
DIMS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")


async def publish_backlog(client: redis.Redis, prefix: str, n: int) -> None:
    """n/3 responses created + scored, and n/3 usage events, written with pipelined XADDs."""
    import json

    per = n // 3
    pipe = client.pipeline(transaction=False)
    ts = f"{time.time():.6f}"
    for i in range(per):
        t = round(0.1 * (i % 15), 2)
        params = {"temperature": t, "top_p": 0.9, "max_tokens": 64, "frequency_penalty": 0.0, "presence_penalty": 0.0}
        created = {"response_id": i + 1, "experiment_id": i // 50, "model": f"model-{i % 5}",
                   "experiment_type": "single", "parameters": params, "cost": 0.0001, "response_time": 500 + i % 300}
        scored = {"response_id": i + 1, "experiment_id": i // 50, "model": f"model-{i % 5}",
                  "metrics": {m: 50 + (i * 7 + k) % 50 for k, m in enumerate(METRICS)}}
        usage = {"principal": f"user:u{i % 20}", "model": f"model-{i % 5}", "prompt_tokens": 20,
                 "completion_tokens": 40, "latency_ms": 100 + i % 900, "cost": 0.0001}
        for stream, etype, data in (("responses", "response.created", created),
                                    ("responses", "response.scored", scored), ("usage", "usage.recorded", usage)):
            pipe.xadd(stream_key(prefix, stream), {"type": etype, "data": json.dumps(data), "request_id": "",
                                                   "ts": ts})
        if i % 2000 == 1999:
            await pipe.execute()
    await pipe.execute()


LOAD_SQL = f"""
CREATE TEMP TABLE src AS
SELECT g AS rid, (current_date - ((g / 100) * 7 % 90))::date AS day, 'model-' || ((g / 100) % 5) AS model,
       1000000 + g / 100 AS eid, round((0.1 * (g % 15))::numeric, 2)::float8 AS temperature,
       round((0.5 + 0.05 * ((g / 15) % 10))::numeric, 2)::float8 AS top_p, 64 * (1 + (g / 7) % 4) AS max_tokens,
       0.0::float8 AS frequency_penalty, 0.0::float8 AS presence_penalty,
       0.00001 * (1 + (g / 150) % 4) + 0.000001 * random() AS cost, 200 + 300 * random() AS response_time_ms,
       50 + 30 * sin(g) + 10 * random() AS overall_quality,
       {", ".join(f"40 + 50 * random() AS {d}" for d in DIMS)}
FROM generate_series(1, $1::int) g;

INSERT INTO daily_model SELECT day, model, 'single', count(*), 0, sum(cost), sum(response_time_ms), count(*),
    sum(overall_quality) FROM src GROUP BY day, model;
INSERT INTO daily_experiments SELECT DISTINCT day, model, 'single', eid FROM src;
INSERT INTO daily_combos SELECT day, model, 'single', {", ".join(PARAMETERS)}, count(*), sum(cost),
    sum(response_time_ms), count(*), sum(overall_quality), sum(overall_quality ^ 2), sum(creativity)
    FROM src GROUP BY day, model, {", ".join(PARAMETERS)};
INSERT INTO combo_experiments SELECT DISTINCT model, {", ".join(PARAMETERS)}, eid FROM src;
INSERT INTO combo_totals SELECT model, {", ".join(PARAMETERS)}, count(*), sum(cost), sum(response_time_ms),
    count(*), sum(overall_quality), sum(overall_quality ^ 2), sum(creativity), count(DISTINCT eid)
    FROM src GROUP BY model, {", ".join(PARAMETERS)};
INSERT INTO daily_pairs SELECT day, model, 'single', p.x, p.y, count(*), sum(p.xv), sum(p.yv), sum(p.xv ^ 2),
    sum(p.yv ^ 2), sum(p.xv * p.yv)
FROM src CROSS JOIN LATERAL (VALUES {", ".join(
    [f"('{x}', '{y}', {x}::float8, {y}::float8)" for x in PARAMETERS for y in (*METRICS, *OUTCOMES)]
    + [f"('{a}', '{b}', {a}::float8, {b}::float8)" for i, a in enumerate(METRICS) for b in METRICS[i + 1:]])}
) AS p(x, y, xv, yv) GROUP BY day, model, p.x, p.y;
INSERT INTO pair_totals SELECT model, x, y, sum(n), sum(sx), sum(sy), sum(sxx), sum(syy), sum(sxy)
    FROM daily_pairs GROUP BY model, x, y;
INSERT INTO experiments (experiment_id, name, type, model, status, created_at, updated_at)
    SELECT eid, 'bench ' || eid, 'single', min(model), 'completed', min(day)::timestamptz, max(day)::timestamptz
    FROM src GROUP BY eid;

CREATE TEMP TABLE usrc AS
SELECT date_trunc('hour', now() - make_interval(hours => g % (90 * 24))) AS hour, 'u' || (g % 50) AS user_id,
       'k' || (g % 3) AS key_id, 'model-' || (g % 5) AS model, 20 + g % 200 AS prompt, 10 + g % 300 AS completion,
       0.00002 * random() AS cost, 50 + 2000 * random() ^ 3 AS latency
FROM generate_series(1, $1::int) g;
INSERT INTO usage_hourly SELECT hour, user_id, key_id, model, count(*), sum(prompt), sum(completion), sum(cost),
    sum(latency) FROM usrc GROUP BY 1, 2, 3, 4;
INSERT INTO usage_latency SELECT hour, user_id, model,
    CASE WHEN latency <= 1 THEN 0 ELSE ceil(ln(latency) / ln({GAMMA!r}))::int END AS bin, count(*)
    FROM usrc GROUP BY 1, 2, 3, 4;
"""


async def timed(call, repeat: int) -> tuple[float, float]:
    await call()  # warm the pool and the plans
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return statistics.median(samples), samples[max(0, round(0.95 * len(samples)) - 1)]


async def main(responses: int, events: int, repeat: int) -> None:
    database_url = os.environ.get("LLMLAB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("LLMLAB_REDIS_URL", "redis://127.0.0.1:6379/0")
    tag = uuid.uuid4().hex[:8]
    schema, prefix = f"bench_analytics_{tag}", f"bench_analytics_{tag}"
    client = redis.Redis.from_url(redis_url)
    settings = load_settings(SPEC.settings_cls, "analytics", environ={}, port=0, database_url=database_url,
                             redis_url=redis_url, db_schema=schema, redis_prefix=prefix, log_level="warning",
                             shutdown_grace_seconds=1.0)
    configure_logging("analytics", "warning", "console")  # the per-RPC log lines would drown the figures
    app = ServiceApp(SPEC, settings)
    try:
        await publish_backlog(client, prefix, events)
        started = time.perf_counter()
        await app.start()
        assert app.db is not None
        while True:
            if await app.db.fetchval("SELECT count(*) FROM processed_events") >= events // 3 * 3:
                break
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        rate = events // 3 * 3 / elapsed
        print(f"consumer: {events // 3 * 3} events applied in {elapsed:.2f}s = {rate:,.0f} events/s "
              f"(target >= {TARGET_EVENTS_PER_S:,.0f}; batch {settings.consumer_batch})")

        t0 = time.perf_counter()
        # A connection of its own: the service pool's 30 s statement timeout is for requests, not for a bulk load.
        conn = await asyncpg.connect(database_url, server_settings={"search_path": f"{schema},public"})
        try:
            await conn.execute(f"TRUNCATE {', '.join(TABLES)}")  # the throughput run's events are not part of it
            for statement in LOAD_SQL.split(";\n"):
                if statement.strip():
                    await conn.execute(statement.replace("$1::int", str(int(responses))))
            await conn.execute("ANALYZE")
        finally:
            await conn.close()
        print(f"loaded {responses:,} scored responses and {responses:,} usage events into the read model "
              f"in {time.perf_counter() - t0:.0f}s")
        sizes = await app.db.fetch("SELECT relname, n_live_tup FROM pg_stat_user_tables WHERE schemaname = $1 "
                                   "ORDER BY relname", schema)
        print("rollup rows: " + ", ".join(f"{r['relname']}={r['n_live_tup']:,}" for r in sizes))

        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            a, u = apb_grpc.AnalyticsServiceStub(channel), upb_grpc.UsageServiceStub(channel)
            cases = {
                "dashboard 90d": lambda: a.GetDashboard(apb.GetDashboardRequest(period="90d")),
                "dashboard 30d, 2 models": lambda: a.GetDashboard(apb.GetDashboardRequest(
                    period="30d", models=["model-1", "model-2"])),
                "optimization quality": lambda: a.GetOptimizationInsights(apb.GetOptimizationInsightsRequest()),
                "optimization cost": lambda: a.GetOptimizationInsights(apb.GetOptimizationInsightsRequest(
                    objective="cost")),
                "correlations": lambda: a.GetCorrelations(apb.GetCorrelationsRequest()),
                "/v1/usage 30d by day": lambda: u.GetUsage(upb.GetUsageRequest(user_id="u7")),
                "/v1/usage 7d by hour": lambda: u.GetUsage(upb.GetUsageRequest(
                    user_id="u7", granularity="hour",
                    start_date=(time.strftime("%Y-%m-%d", time.gmtime(time.time() - 6 * 86400))))),
            }
            print(f"{'RPC (gRPC on the service, ' + str(repeat) + ' calls)':<44}{'p50 ms':>9}{'p95 ms':>9}"
                  f"{'target':>9}")
            for name, call in cases.items():
                p50, p95 = await timed(call, repeat)
                mark = "ok" if p95 <= TARGET_P95_MS else "OVER"
                print(f"{name:<44}{p50:>9.1f}{p95:>9.1f}{TARGET_P95_MS:>7.0f} {mark}")
    finally:
        await app.stop()
        conn = await asyncpg.connect(database_url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
        async for k in client.scan_iter(match=f"{prefix}:*", count=500):
            await client.delete(k)
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.responses, args.events, args.repeat))
