"""Sweep SQL against the real Postgres (services/experiments/sweep_repository.py, docs/sweeps.md): a response is
stored once per (sweep, combination, iteration), the engine's throughput is tokens over busy time, the queue
position follows priority then age, and completion happens when the last response is stored."""

from __future__ import annotations

import datetime as dt

import pytest

from services.experiments import sweeps
from services.experiments.response_repository import Outcome, ResponseRepository
from services.experiments.sweep_repository import SweepRepository


def new_sweep(priority: str = "normal", per: int = 2) -> sweeps.NewSweep:
    return sweeps.validate("s", "", "Name a colour.", "m", {"temperature": {"min": 0.5, "max": 1.0, "step": 0.5}},
                           per, priority, None, max_responses=100)


@pytest.fixture
async def repos(experiments_app):
    return SweepRepository(experiments_app.db), ResponseRepository(experiments_app.db), experiments_app.db


def outcome(sweep_id: int, c: int, i: int, **kw) -> Outcome:  # type: ignore[no-untyped-def]
    return Outcome(sweep_id, "00000000-0000-0000-0000-000000000001", "m", {"temperature": 0.5}, content="x",
                   sweep_combination=c, sweep_iteration=i, seed=sweeps.response_seed(sweep_id, c, i), **kw)


async def test_a_response_is_stored_once_and_the_last_one_completes_the_sweep(repos):
    repo, responses, _ = repos
    row = await repo.create(new_sweep(), "user-1", 0.5, 60)
    assert (row.status, row.total_combinations, row.total_responses, row.seed) == ("queued", 2, 4, row.id)
    assert await repo.start(row.id, 1)
    first = await responses.insert_once(outcome(row.id, 1, 1))
    assert first is not None
    assert await responses.insert_once(outcome(row.id, 1, 1, token_count=99)) is None  # a duplicate writes nothing
    for c, i in ((1, 2), (2, 1)):
        await responses.insert_once(outcome(row.id, c, i))
    assert await repo.finish_if_done(row.id) is None  # 3 of 4
    await responses.insert_once(outcome(row.id, 2, 2, error={"message": "x", "statusCode": 500, "code": "E"}))
    assert await repo.finish_if_done(row.id) == "completed"
    done = await repo.get(row.id)
    assert (done.done, done.failed, done.completed_at is not None) == (4, 1, True)
    stored = await repo.responses(row.id)
    assert [(r.combination_id, r.iteration, r.status) for r in stored] == [
        (1, 1, "completed"), (1, 2, "completed"), (2, 1, "completed"), (2, 2, "failed")]
    assert stored[0].seed == sweeps.response_seed(row.id, 1, 1)
    assert await repo.cancel(row.id) == "completed"  # a finished sweep stays as it is


async def test_queue_position_is_priority_then_age(repos):
    repo, _, _ = repos
    low = await repo.create(new_sweep("low"), "", 0, 0)
    normal = await repo.create(new_sweep("normal"), "", 0, 0)
    high = await repo.create(new_sweep("high"), "", 0, 0)
    normal2 = await repo.create(new_sweep("normal"), "", 0, 0)
    positions = {r.id: await repo.queue_position(r.id) for r in (low, normal, high, normal2)}
    assert positions == {high.id: 1, normal.id: 2, normal2.id: 3, low.id: 4}
    assert await repo.cancel(normal.id) == "cancelled"
    assert await repo.queue_position(normal2.id) == 2 and await repo.queue_position(low.id) == 3


async def test_throughput_is_tokens_over_the_union_of_busy_intervals(repos):
    repo, _, db = repos
    row = await repo.create(new_sweep(), "", 0, 0)
    now = dt.datetime.now(dt.UTC)
    # Two overlapping generations (busy 10 s together) and one alone (5 s): 15 busy seconds, not 20.
    for ends_at, took_ms, tokens in ((now - dt.timedelta(seconds=20), 10_000, 100),
                                     (now - dt.timedelta(seconds=25), 5_000, 50),
                                     (now - dt.timedelta(seconds=0), 5_000, 75)):
        await db.execute("INSERT INTO responses (experiment_id, content, response_time_ms, token_count, created_at) "
                         "VALUES ($1, 'x', $2, $3, $4)", row.id, took_ms, tokens, ends_at)
    tps, n = await repo.throughput()
    assert n == 3 and tps == pytest.approx(225 / 15)
