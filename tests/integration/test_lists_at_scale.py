"""The list machinery of docs/scale.md against the real Postgres: the responses_rollup trigger keeps each
experiment's aggregates equal to a recount of its responses through every kind of write, and capped counts are
exact under the cap and flagged estimates above it."""

import asyncpg
import pytest

from llmlab.runtime import db
from services.experiments.app import SPEC

RECOUNT = """
SELECT e.id, e.generated, e.cost_sum, e.duration_sum, e.quality_score,
       (SELECT count(*) FROM responses r WHERE r.experiment_id = e.id AND r.status = 'completed') AS n,
       (SELECT coalesce(sum(cost::numeric), 0) FROM responses r
         WHERE r.experiment_id = e.id AND r.status = 'completed') AS cost,
       (SELECT coalesce(sum(response_time_ms), 0) FROM responses r
         WHERE r.experiment_id = e.id AND r.status = 'completed') AS duration,
       (SELECT avg(overall_quality) FROM responses r WHERE r.experiment_id = e.id AND r.status = 'completed') AS q
FROM experiments e ORDER BY e.id
"""


@pytest.fixture
async def conn(database_url, schema):
    c = await asyncpg.connect(database_url)
    await db.migrate(c, schema, db.load_migrations(SPEC.migrations))
    await c.execute(f'SET search_path TO "{schema}", public')
    yield c
    await c.close()


async def new_experiment(conn, name: str) -> int:
    return await conn.fetchval("INSERT INTO experiments (name, model, prompt) VALUES ($1, 'm', 'p') RETURNING id",
                               name)


async def add(conn, exp: int, quality: float | None, cost: float, ms: int, status: str = "completed") -> int:
    return await conn.fetchval(
        """INSERT INTO responses (experiment_id, content, overall_quality, cost, response_time_ms, status)
           VALUES ($1, 'x', $2, $3, $4, $5) RETURNING id""", exp, quality, cost, ms, status)


async def assert_consistent(conn) -> None:
    for r in await conn.fetch(RECOUNT):
        assert r["generated"] == r["n"], dict(r)
        assert r["cost_sum"] == r["cost"], dict(r)
        assert r["duration_sum"] == r["duration"], dict(r)
        if r["q"] is None:
            assert r["quality_score"] is None
        else:
            assert r["quality_score"] == pytest.approx(r["q"], abs=1e-9)


async def test_rollup_follows_inserts_scores_status_moves_and_deletes(conn):
    a, b = await new_experiment(conn, "a"), await new_experiment(conn, "b")
    await assert_consistent(conn)
    r1 = await add(conn, a, None, 0.1, 100)
    r2 = await add(conn, a, 80.0, 0.2, 200)
    await add(conn, a, 70.0, 0.3, 300, status="failed")  # a failed generation counts nowhere
    await assert_consistent(conn)
    await conn.execute("UPDATE responses SET overall_quality = 91.5 WHERE id = $1", r1)  # scored later
    await conn.execute("UPDATE responses SET cost = 0.25, response_time_ms = 250 WHERE id = $1", r2)
    await assert_consistent(conn)
    await conn.execute("UPDATE responses SET status = 'failed' WHERE id = $1", r2)
    await conn.execute("UPDATE responses SET experiment_id = $2 WHERE id = $1", r1, b)
    await assert_consistent(conn)
    await conn.execute("DELETE FROM responses WHERE id = $1", r1)
    await assert_consistent(conn)
    row = await conn.fetchrow("SELECT generated, quality_score FROM experiments WHERE id = $1", b)
    assert (row["generated"], row["quality_score"]) == (0, None)
    await conn.execute("DELETE FROM experiments WHERE id = $1", a)  # the cascade's deletes do not fail
    await assert_consistent(conn)


async def test_count_is_exact_under_the_cap_and_a_flagged_estimate_above(conn):
    exp = await new_experiment(conn, "counted")
    await conn.execute("""INSERT INTO responses (experiment_id, content) SELECT $1, 'r' || g
                          FROM generate_series(1, 300) g""", exp)
    await conn.execute("ANALYZE responses")
    exact = await db.count_capped(conn, "FROM responses r WHERE r.experiment_id = $1", [exp], cap=1000)
    assert exact == db.Total(300, estimated=False)
    estimated = await db.count_capped(conn, "FROM responses r WHERE r.experiment_id = $1", [exp], cap=100)
    assert estimated.estimated and estimated.value > 100
    none = await db.count_capped(conn, "FROM responses r WHERE r.experiment_id = $1", [exp + 1], cap=100)
    assert none == db.Total(0)


async def test_count_of_a_costly_query_is_an_estimate_however_few_rows_match(conn):
    exp = await new_experiment(conn, "costly")
    await conn.execute("""INSERT INTO responses (experiment_id, content) SELECT $1, 'r' || g
                          FROM generate_series(1, 2000) g""", exp)
    await conn.execute("ANALYZE responses")
    # A filter no index serves: the planner expects a full scan, so the count is not run.
    total = await db.count_capped(conn, "FROM responses r WHERE r.content LIKE '%9%'", [], cost_limit=1.0)
    assert total.estimated
    assert await db.count_capped(conn, "FROM responses r WHERE r.content LIKE '%9%'", []) == db.Total(
        await conn.fetchval("SELECT count(*) FROM responses WHERE content LIKE '%9%'"))
