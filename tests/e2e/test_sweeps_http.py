"""Sweeps through Envoy as a user with curl would run one (docs/sweeps.md): POST /api/batch-experiments, poll its
status while the platform's experiments-worker runs it, read results whose statistics are recomputed here from the
stored responses, find it in the lists, cancel another; bad input is a 400 in the lab shape with nothing queued."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from scipy import stats

from .test_bad_input import assert_lab_error

MODEL = "smollm2-135m-instruct"
SWEEP = {
    "name": "Sweep e2e", "description": "2 temperatures x 2 responses", "model": MODEL,
    "prompt": "Name a colour.",
    "parameter_grid": {"temperature": {"min": 0.4, "max": 1.0, "step": 0.6}, "top_p": 0.9, "max_tokens": 8},
    "responses_per_combination": 2, "priority": "high",
}


async def wait_done(http, sweep_id: int, seconds: float = 240) -> dict:
    deadline = time.monotonic() + seconds
    seen = []
    while time.monotonic() < deadline:
        r = await http.get(f"/api/batch-experiments/{sweep_id}")
        assert r.status_code == 200, r.text
        b = r.json()["data"]["batch_experiment"]
        seen.append(b["progress"]["completed_responses"])
        if b["status"] in ("completed", "failed", "cancelled"):
            assert seen == sorted(seen)  # progress never goes backwards
            return b
        await asyncio.sleep(0.5)
    raise AssertionError(f"sweep {sweep_id} did not finish: {seen[-5:]}")


@pytest.fixture(scope="module")
async def sweep(http):
    r = await http.post("/api/batch-experiments", json=SWEEP)
    assert r.status_code == 200, r.text
    created = r.json()["data"]["batch_experiment"]
    return created, await wait_done(http, created["id"])


async def test_create_answers_the_documented_estimates(sweep):
    created, _ = sweep
    assert set(created) >= {"id", "name", "status", "total_combinations", "total_responses", "estimated_cost",
                            "estimated_duration", "created_at", "queue_position"}
    assert (created["status"], created["total_combinations"], created["total_responses"]) == ("queued", 2, 4)
    assert created["queue_position"] >= 1 and created["estimated_duration"].endswith(("m", "h"))
    assert isinstance(created["estimated_cost"], int | float) and created["seed"] == created["id"]


async def test_the_worker_completes_the_sweep_and_results_carry_recomputable_statistics(http, sweep, db):
    created, done = sweep
    assert done["status"] == "completed", done
    p = done["progress"]
    assert (p["completed_combinations"], p["completed_responses"], p["percentage"], p["eta_minutes"]) == (2, 4, 100,
                                                                                                         0)
    assert "current_combination" not in p and done["eta_method"] == "finished"
    rows = await db.fetch("SELECT id, sweep_combination, sweep_iteration, seed, overall_quality, parameters "
                          "FROM responses WHERE experiment_id = $1 ORDER BY 2, 3", created["id"])
    assert [(r["sweep_combination"], r["sweep_iteration"]) for r in rows] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    r = await http.get(f"/api/batch-experiments/{created['id']}/results", params={"sort_by": "combination_id"})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["batch_id"] == created["id"] and data["summary"]["total_combinations"] == 2
    by_combo = {c["combination_id"]: c for c in data["results"]}
    for cid in (1, 2):
        q = [x["overall_quality"] for x in rows if x["sweep_combination"] == cid]
        c = by_combo[cid]
        assert c["average_quality"] == round(sum(q) / 2, 1)
        assert c["quality_std"] == round(stats.tstd(q), 2)
        half = stats.t.ppf(0.975, 1) * stats.sem(q)
        ci = c["confidence_interval"]
        if half == 0:
            assert ci["lower"] == ci["upper"]
        else:
            assert math.isclose(ci["lower"], round(sum(q) / 2 - half, 2), abs_tol=0.011)
        assert [x["seed"] for x in c["responses"]] == [x["seed"] for x in rows if x["sweep_combination"] == cid]
    analysis = data["analysis"]
    assert set(analysis["best_parameters"]) == {"temperature"}
    scored_t = [x["overall_quality"] for x in rows]
    if len(set(scored_t)) > 1:
        temps = [0.4, 0.4, 1.0, 1.0]
        expected = stats.pearsonr(temps, scored_t)
        assert math.isclose(analysis["parameter_correlations"]["temperature_vs_overall_quality"],
                            round(expected.statistic, 3), abs_tol=1e-9)
        test = next(t for t in analysis["correlation_tests"] if t["metric"] == "overall_quality")
        assert math.isclose(test["pearson_p_value"], round(expected.pvalue, 6), abs_tol=1e-9)
    assert any("n=4" in s for s in analysis["insights"])
    assert analysis["best_vs_runner_up"] is None or analysis["best_vs_runner_up"]["test"] == "welch_t_test"


async def test_a_sweep_is_listed_and_is_an_experiment_of_type_batch(http, sweep):
    created, _ = sweep
    r = await http.get("/api/batch-experiments", params={"limit": 100})
    assert r.status_code == 200 and r.json()["meta"]["pagination"]["total"] >= 1
    item = next(b for b in r.json()["data"]["batch_experiments"] if b["id"] == created["id"])
    assert item["status"] == "completed" and item["progress"] == 100 and item["completed_at"]
    assert item["total_combinations"] == 2 and isinstance(item["best_quality"], int | float)
    r = await http.get("/api/experiments", params={"type": "batch", "limit": 100})
    exp = next(e for e in r.json()["data"]["experiments"] if e["id"] == created["id"])
    assert exp["type"] == "batch" and exp["status"] == "completed"


async def test_cancel_keeps_stored_results_and_a_finished_sweep_cannot_be_cancelled(http, sweep):
    created, _ = sweep
    assert_lab_error(await http.post(f"/api/batch-experiments/{created['id']}/cancel", json={}), 409,
                     "SWEEP_FINISHED")
    r = await http.post("/api/batch-experiments", json={**SWEEP, "priority": "low", "responses_per_combination": 3})
    other = r.json()["data"]["batch_experiment"]
    r = await http.post(f"/api/batch-experiments/{other['id']}/cancel", json={})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["batch_experiment"]["status"] == "cancelled"
    done = await wait_done(http, other["id"], 10)
    assert done["status"] == "cancelled" and done["progress"]["completed_responses"] <= 6


@pytest.mark.parametrize(("change", "field", "constraint"), [
    ({"parameter_grid": {"temperature": {"min": 1.0, "max": 0.2, "step": 0.2}}}, "parameter_grid.temperature.min",
     "must be less than or equal to max (0.2)"),
    ({"parameter_grid": {"temperature": {"min": 0.2, "max": 1.0, "step": 0}}}, "parameter_grid.temperature.step",
     "must be a number greater than 0"),
    ({"parameter_grid": {"top_k": 4}}, "parameter_grid.top_k",
     "unknown parameter; expected one of temperature, top_p, frequency_penalty, presence_penalty, max_tokens"),
    ({"parameter_grid": {"temperature": {"min": 0, "max": 2, "step": 0.01}}, "responses_per_combination": 100},
     "responses_per_combination", "201 combination(s) x 100 is 20100 responses; a sweep generates at most 5000"),
    ({"model": "no-such-model"}, "model", "is not a registered model (GET /api/models lists them)"),
    ({"priority": "urgent"}, "priority", "must be one of high, normal, low"),
])
async def test_bad_input_is_a_400_with_details_and_nothing_is_queued(http, db, change, field, constraint):
    before = await db.fetchval("SELECT count(*) FROM experiments")
    err = assert_lab_error(await http.post("/api/batch-experiments", json={**SWEEP, **change}), 400,
                           "VALIDATION_ERROR")
    assert err["details"]["field"] == field and err["details"]["constraint"] == constraint
    assert await db.fetchval("SELECT count(*) FROM experiments") == before


async def test_unknown_ids_are_404(http):
    for method, path in (("GET", "/api/batch-experiments/999999"), ("GET", "/api/batch-experiments/999999/results"),
                         ("POST", "/api/batch-experiments/999999/cancel")):
        r = await http.request(method, path, json={} if method == "POST" else None)
        err = assert_lab_error(r, 404, "BATCH_EXPERIMENT_NOT_FOUND")
        assert err["details"] == {"batch_experiment_id": 999999}
