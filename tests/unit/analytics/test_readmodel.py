"""The projection's rollup math with constructed events: sums per key, a response counted once both halves are
known (in either order), a re-score replacing its contribution, usage into hourly sums and sketch bins."""

from __future__ import annotations

import datetime as dt

import pytest

from services.analytics import readmodel as rm

WHEN = dt.datetime(2026, 3, 4, 10, 30, 15, tzinfo=dt.UTC)
PARAMS = {"temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "frequency_penalty": 0.0, "presence_penalty": 0.0}
CREATED = {"response_id": 1, "experiment_id": 5, "model": "m", "experiment_type": "single", "parameters": PARAMS,
           "cost": 0.002, "response_time": 400}
SCORED = {"response_id": 1, "model": "m", "metrics": {"overall_quality": 80.0, "creativity": 60.0}}
DAY = (WHEN.date(), "m", "single")


def net(d: rm.Deltas) -> dict:
    """The deltas with zero rows dropped (what the rollups end up holding)."""
    return {k: v for k, v in d.daily_pairs.items() if any(abs(x) > 1e-12 for x in v)}


@pytest.mark.parametrize("scored_first", [False, True])
def test_a_response_counts_once_both_halves_are_known(scored_first):
    d, fact = rm.Deltas(), rm.Fact(1)
    if scored_first:
        rm.response_scored(fact, SCORED, d)
        assert not d.daily_pairs  # nothing to pair the metrics with yet
        rm.response_created(fact, CREATED, WHEN, d)
    else:
        rm.response_created(fact, CREATED, WHEN, d)
        rm.response_scored(fact, SCORED, d)
    assert d.daily_model[DAY] == [1, 0, 0.002, 400, 1, 80.0]
    combo = d.daily_combos[(*DAY, 0.7, 0.9, 32, 0.0, 0.0)]
    assert combo[:7] == [1, 0.002, 400, 1, 80.0, 6400.0, 60.0]
    assert d.daily_pairs[(*DAY, "temperature", "overall_quality")] == pytest.approx([1, 0.7, 80.0, 0.49, 6400.0, 56.0])
    assert d.daily_pairs[(*DAY, "overall_quality", "creativity")] == pytest.approx([1, 80, 60, 6400, 3600, 4800])
    assert (*DAY, "temperature", "coherence") not in d.daily_pairs  # no such score: no pair
    assert d.combo_experiments == {("m", 0.7, 0.9, 32, 0.0, 0.0, 5)}


def test_a_rescore_replaces_the_contribution_and_a_repeat_changes_nothing():
    d, fact = rm.Deltas(), rm.Fact(1)
    rm.response_created(fact, CREATED, WHEN, d)
    rm.response_scored(fact, SCORED, d)
    rm.response_scored(fact, SCORED, d)  # the same score again: no change
    rm.response_scored(fact, {**SCORED, "metrics": {"overall_quality": 50.0}}, d)
    assert d.daily_model[DAY][4:] == [1, 50.0]
    assert d.daily_pairs[(*DAY, "overall_quality", "creativity")] == pytest.approx([0] * 6)
    assert d.daily_pairs[(*DAY, "temperature", "overall_quality")] == pytest.approx([1, 0.7, 50, 0.49, 2500, 35])
    rm.response_created(fact, {**CREATED, "cost": 9.0}, WHEN, d)  # announced twice: the first stands
    assert d.daily_model[DAY][:4] == [1, 0, 0.002, 400]


def test_usage_goes_to_its_hour_principal_and_sketch_bin():
    d = rm.Deltas()
    for latency in (120.0, 130.0):
        rm.usage_recorded({"principal": "user:u1/key:k1", "model": "m", "prompt_tokens": 10,
                           "completion_tokens": 5, "latency_ms": latency, "cost": 0.01}, WHEN, d)
    hour = WHEN.replace(minute=0, second=0)
    assert d.usage_hourly[(hour, "u1", "k1", "m")] == pytest.approx([2, 20, 10, 0.02, 250.0])
    bins = {k[3]: v for k, v in d.usage_latency.items()}
    assert sum(bins.values()) == 2
    for b, latency in zip(sorted(bins), (120.0, 130.0), strict=True):
        assert rm.bin_value(b) == pytest.approx(latency, rel=rm.SKETCH_ALPHA)


def test_failures_experiments_and_jobs():
    d = rm.Deltas()
    rm.response_failed({"model": "m", "status_code": 502}, WHEN, d)
    rm.response_failed({"model": "m", "status_code": 400}, WHEN, d)
    assert d.daily_model[DAY][1] == 2 and sum(d.failure_minutes.values()) == 1
    rm.experiment_event("experiment.completed", {"experiment_id": 5, "name": "x", "average_quality": 71.5},
                        WHEN, ("experiments", "1-0"), d)
    assert d.experiments[5]["status"] == "completed" and d.activity[0]["quality"] == 71.5
    rm.experiment_event("batch_experiment.failed", {"experiment_id": 9, "name": "b"}, WHEN, ("experiments", "2-0"), d)
    assert 9 not in d.experiments and d.activity[1]["type"] == "batch_failed"
    assert rm.job_event("fine_tuning.job.succeeded", {"id": "ftjob_1"}, WHEN, d)
    assert d.jobs[("training", "ftjob_1")][0] == "succeeded"
    assert not rm.job_event("something.else", {}, WHEN, d)
