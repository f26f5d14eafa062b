"""The analytics consumer SIGKILLed while it applies a backlog: a second process reclaims what the first had read,
and the rollups end exactly equal to the events (nothing lost, nothing counted twice)."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import sys

import asyncpg
import pytest
import redis.asyncio as redis

from llmlab.runtime.streams import stream_key

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESPONSES = 3000


async def start(env: dict) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.analytics", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        assert line, "analytics exited before it was ready"
        if line.startswith("LLMLAB_READY"):
            break

    async def drain() -> None:
        while await proc.stdout.readline():  # type: ignore[union-attr]
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc


async def test_a_killed_consumer_loses_and_doubles_nothing(database_url, redis_url, schema, redis_prefix):
    client = redis.Redis.from_url(redis_url)
    pipe = client.pipeline(transaction=False)
    for i in range(RESPONSES):
        created = {"response_id": i + 1, "experiment_id": 1, "model": "m", "cost": 0.5,
                   "parameters": {"temperature": 0.1 * (i % 10), "top_p": 0.9, "max_tokens": 16},
                   "response_time": 100}
        scored = {"response_id": i + 1, "model": "m", "metrics": {"overall_quality": float(i % 100)}}
        usage = {"principal": "user:u1", "model": "m", "prompt_tokens": 3, "completion_tokens": i % 7,
                 "latency_ms": 50.0}
        for stream, etype, data in (("responses", "response.created", created),
                                    ("responses", "response.scored", scored), ("usage", "usage.recorded", usage)):
            pipe.xadd(stream_key(redis_prefix, stream), {"type": etype, "data": json.dumps(data), "ts": "1.0e9"})
    await pipe.execute()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
           "PYTHONUNBUFFERED": "1", "LLMLAB_DATABASE_URL": database_url, "LLMLAB_REDIS_URL": redis_url,
           "LLMLAB_ANALYTICS_DB_SCHEMA": schema, "LLMLAB_REDIS_PREFIX": redis_prefix, "LLMLAB_ANALYTICS_PORT": "0",
           "LLMLAB_ANALYTICS_CONSUMER_BATCH": "200", "LLMLAB_ANALYTICS_CONSUMER_CLAIM_IDLE_MS": "500",
           "LLMLAB_LOG_LEVEL": "warning", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "1"}
    conn = await asyncpg.connect(database_url)
    try:
        victim = await start(env)
        total = RESPONSES * 3
        while True:  # kill it mid-way, while it holds read but unacknowledged batches
            try:
                n = await conn.fetchval(f'SELECT count(*) FROM "{schema}".processed_events')
            except asyncpg.UndefinedTableError:
                n = 0
            if n >= total // 4:
                break
            await asyncio.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert await victim.wait() == -signal.SIGKILL
        assert await conn.fetchval(f'SELECT count(*) FROM "{schema}".processed_events') < total

        survivor = await start(env)
        try:
            for _ in range(600):
                if await conn.fetchval(f'SELECT count(*) FROM "{schema}".processed_events') == total:
                    break
                await asyncio.sleep(0.1)
            row = await conn.fetchrow(f'SELECT sum(responses) r, sum(scored) s, sum(quality_sum) q, sum(cost) c '
                                      f'FROM "{schema}".daily_model')
            assert (row["r"], row["s"]) == (RESPONSES, RESPONSES)
            assert row["q"] == pytest.approx(sum(float(i % 100) for i in range(RESPONSES)))
            assert row["c"] == pytest.approx(0.5 * RESPONSES)
            usage = await conn.fetchrow(f'SELECT sum(requests) r, sum(completion_tokens) c '
                                        f'FROM "{schema}".usage_hourly')
            assert (usage["r"], usage["c"]) == (RESPONSES, sum(i % 7 for i in range(RESPONSES)))
            pairs = await conn.fetchval(f"SELECT sum(n) FROM \"{schema}\".pair_totals "
                                        "WHERE x = 'temperature' AND y = 'overall_quality'")
            assert pairs == RESPONSES
        finally:
            survivor.send_signal(signal.SIGTERM)
            await asyncio.wait_for(survivor.wait(), 20)
    finally:
        await conn.close()
        await client.aclose()
