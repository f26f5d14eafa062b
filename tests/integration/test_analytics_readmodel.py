"""The analytics read model against the real Postgres and Redis: events published on the streams become rollups
once each (redelivery changes nothing), the lag is exported, and a rebuild from the streams gives the same rollups."""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest

from llmlab.runtime import load_settings
from llmlab.runtime.streams import EventPublisher, decode_entry, stream_key
from services.analytics.projector import Projector
from services.analytics.rebuild import rebuild
from services.analytics.settings import AnalyticsSettings

MODEL = "tiny-model"
ROLLUPS = ("daily_model", "daily_combos", "daily_pairs", "usage_hourly", "usage_latency", "experiments",
           "daily_experiments", "combo_experiments")


@pytest.fixture
async def analytics_app(app_factory):
    from services.analytics.app import SPEC

    app = await app_factory(SPEC)
    yield app
    await app.stop()


def lab_events(n: int) -> list[tuple[str, str, dict]]:
    """n responses of two experiments over a temperature grid, each created then scored, and their usage."""
    out: list[tuple[str, str, dict]] = [
        ("experiments", "experiment.created", {"experiment_id": 1, "name": "grid", "type": "single", "model": MODEL,
                                               "principal": "user:u1"}),
    ]
    for i in range(n):
        t = round(0.1 + 0.2 * (i % 5), 2)
        quality = 50 + 40 * t + (i % 3)
        out.append(("responses", "response.created", {
            "response_id": i + 1, "experiment_id": 1 + i % 2, "model": MODEL, "experiment_type": "single",
            "parameters": {"temperature": t, "top_p": 0.9, "max_tokens": 32, "frequency_penalty": 0.0,
                           "presence_penalty": 0.0},
            "cost": 0.001 * (1 + t), "response_time": 100 + 10 * i}))
        out.append(("responses", "response.scored", {
            "response_id": i + 1, "experiment_id": 1 + i % 2, "model": MODEL, "experiment_type": "single",
            "metrics": {"overall_quality": quality, "coherence": 80 - 10 * t, "completeness": 70,
                        "readability": 60 + i % 4, "creativity": 30 + 50 * t, "specificity": 50,
                        "length_appropriateness": 90}}))
        out.append(("usage", "usage.recorded", {
            "principal": "user:u1/key:k1", "model": MODEL, "prompt_tokens": 10, "completion_tokens": 20 + i,
            "total_tokens": 30 + i, "latency_ms": 100.0 + 10 * i, "cost": 0.001}))
    out.append(("experiments", "experiment.completed", {"experiment_id": 1, "name": "grid", "type": "single",
                                                         "model": MODEL, "average_quality": 70.0}))
    return out


async def publish(app, events) -> None:
    pub = EventPublisher(app.redis, app.settings.redis_prefix)
    for stream, etype, data in events:
        await pub.publish(stream, etype, data)


async def wait_applied(pool: asyncpg.Pool, count: int, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await pool.fetchval("SELECT count(*) FROM processed_events") < count:
        assert loop.time() < deadline, "the consumer did not apply the events in time"
        await asyncio.sleep(0.1)


async def snapshot(pool: asyncpg.Pool) -> dict[str, list]:
    out = {}
    for table in ROLLUPS:
        rows = await pool.fetch(f"SELECT * FROM {table} ORDER BY 1, 2, 3")
        out[table] = [tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in rows]
    return out


async def test_events_become_rollups_once_and_a_rebuild_reproduces_them(analytics_app, schema, database_url):
    events = lab_events(10)
    await publish(analytics_app, events)
    pool = analytics_app.db
    await wait_applied(pool, len(events))

    row = await pool.fetchrow("SELECT sum(responses) r, sum(scored) s, sum(quality_sum) q, sum(cost) c "
                              "FROM daily_model")
    qualities = [e[2]["metrics"]["overall_quality"] for e in events if e[1] == "response.scored"]
    costs = [e[2]["cost"] for e in events if e[1] == "response.created"]
    assert (row["r"], row["s"]) == (10, 10)
    assert row["q"] == pytest.approx(sum(qualities)) and row["c"] == pytest.approx(sum(costs))
    # Pearson sums of temperature x overall_quality equal those of the raw pairs.
    pair = await pool.fetchrow("SELECT sum(n) n, sum(sxy) sxy FROM daily_pairs "
                               "WHERE x = 'temperature' AND y = 'overall_quality'")
    temps = [e[2]["parameters"]["temperature"] for e in events if e[1] == "response.created"]
    assert pair["n"] == 10 and pair["sxy"] == pytest.approx(sum(t * q for t, q in zip(temps, qualities, strict=True)))
    usage = await pool.fetchrow("SELECT sum(requests) r, sum(completion_tokens) c FROM usage_hourly "
                                "WHERE user_id = 'u1' AND key_id = 'k1'")
    assert (usage["r"], usage["c"]) == (10, sum(20 + i for i in range(10)))
    exp = await pool.fetchrow("SELECT * FROM experiments WHERE experiment_id = 1")
    assert (exp["name"], exp["status"]) == ("grid", "completed")
    assert await pool.fetchval("SELECT count(*) FROM activity") == 2

    before = await snapshot(pool)
    # At-least-once: the whole responses stream delivered again changes nothing.
    raw = await analytics_app.redis.xrange(stream_key(analytics_app.settings.redis_prefix, "responses"))
    applied = await Projector(pool).apply("responses", [decode_entry(i, f) for i, f in raw])
    assert applied.messages == [] and await snapshot(pool) == before

    # The lag gauge is exported and reaches zero once everything is read.
    for _ in range(50):
        text = analytics_app.metrics.render()
        if 'analytics_consumer_lag{stream="responses"} 0.0' in text:
            break
        await asyncio.sleep(0.1)
    assert 'analytics_consumer_lag{stream="responses"} 0.0' in text
    assert 'analytics_events_total{stream="responses",type="response.scored"} 10.0' in text

    # A rebuild from the streams empties the model and replays it to the same rollups.
    settings = load_settings(AnalyticsSettings, "analytics", environ={}, database_url=database_url,
                             redis_url=analytics_app.settings.redis_url, db_schema=schema,
                             redis_prefix=analytics_app.settings.redis_prefix)
    counts = await rebuild(settings, out=open("/dev/null", "w"))
    assert counts["responses"] == 20 and counts["usage"] == 10
    assert await snapshot(pool) == before


async def test_a_rescore_replaces_its_contribution(analytics_app):
    pool = analytics_app.db
    events = lab_events(3)
    await publish(analytics_app, events)
    await wait_applied(pool, len(events))
    rescored = {"response_id": 1, "experiment_id": 1, "model": MODEL, "experiment_type": "single",
                "metrics": {"overall_quality": 10.0, "creativity": 5.0}}
    await publish(analytics_app, [("responses", "response.scored", rescored)])
    await wait_applied(pool, len(events) + 1)
    qualities = [e[2]["metrics"]["overall_quality"] for e in events if e[1] == "response.scored"]
    total = await pool.fetchval("SELECT sum(quality_sum) FROM daily_model")
    assert total == pytest.approx(sum(qualities[1:]) + 10.0)
    n = await pool.fetchval("SELECT sum(n) FROM daily_pairs WHERE x = 'temperature' AND y = 'coherence'")
    assert n == 2  # the new score has no coherence: the old one's pair is taken back
    assert not math.isnan(await pool.fetchval("SELECT sum(scored) FROM daily_model"))
