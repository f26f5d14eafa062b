"""Sweep rules and statistics (services/experiments/sweeps.py, sweep_stats.py; docs/sweeps.md): the grid expands
floating-point safely and refuses bad input, seeds depend on position only, and every statistic is recomputed here
from constructed responses, by hand and with scipy."""

from __future__ import annotations

import datetime as dt
import math
import random
import statistics

import pytest
from scipy import stats

from llmlab.runtime import InvalidArgument
from services.experiments import sweep_stats, sweeps
from services.experiments.sweep_stats import SweepResponse


def details(exc: pytest.ExceptionInfo[InvalidArgument]) -> dict:
    return exc.value.details or {}


# --- grid --------------------------------------------------------------------------------------------------


def test_bounds_are_inclusive_and_floating_point_safe():
    g = sweeps.parse_grid({"temperature": {"min": 0.2, "max": 1.0, "step": 0.2},
                           "top_p": {"min": 0.7, "max": 1.0, "step": 0.1}, "max_tokens": 1000})
    assert g.axes == {"temperature": [0.2, 0.4, 0.6, 0.8, 1.0], "top_p": [0.7, 0.8, 0.9, 1.0]}
    assert g.size == 20  # the documented example: 20 combinations
    combos = g.combinations()
    assert combos[0] == {"temperature": 0.2, "top_p": 0.7, "max_tokens": 1000, "frequency_penalty": 0.0,
                         "presence_penalty": 0.0}
    assert [(c["temperature"], c["top_p"]) for c in combos[:5]] == [
        (0.2, 0.7), (0.2, 0.8), (0.2, 0.9), (0.2, 1.0), (0.4, 0.7)]  # temperature outer, top_p inner
    assert sweeps.parse_grid({"temperature": {"min": 0.1, "max": 0.3, "step": 0.1}}).axes["temperature"] == [
        0.1, 0.2, 0.3]


def test_fixed_values_and_a_one_point_range_are_not_swept():
    g = sweeps.parse_grid({"temperature": 0.3, "top_p": {"min": 0.9, "max": 0.9}, "presence_penalty": 0.5})
    assert g.axes == {} and g.size == 1
    assert g.combinations() == [{"temperature": 0.3, "top_p": 0.9, "max_tokens": 256, "frequency_penalty": 0.0,
                                 "presence_penalty": 0.5}]


@pytest.mark.parametrize(("grid", "field", "constraint"), [
    ({"temperature": {"min": 1.0, "max": 0.2, "step": 0.2}}, "parameter_grid.temperature.min",
     "must be less than or equal to max (0.2)"),
    ({"temperature": {"min": 0.2, "max": 1.0, "step": 0}}, "parameter_grid.temperature.step",
     "must be a number greater than 0"),
    ({"top_p": {"min": 0.5, "max": 1.0, "step": -0.1}}, "parameter_grid.top_p.step", "must be a number greater than 0"),
    ({"top_k": 5}, "parameter_grid.top_k", "unknown parameter; expected one of temperature, top_p, "
                                           "frequency_penalty, presence_penalty, max_tokens"),
    ({"temperature": {"min": 0, "max": 3, "step": 1}}, "parameter_grid.temperature.max", "must be between 0 and 2"),
    ({"temperature": {"min": 0, "max": 1, "stride": 1}}, "parameter_grid.temperature.stride",
     "unknown range key; expected min, max and step"),
    ({"max_tokens": {"min": 8, "max": 16, "step": 8}}, "parameter_grid.max_tokens",
     "must be a fixed integer, not a range"),
    ({"temperature": {"max": 1}}, "parameter_grid.temperature.min", "is required in a range"),
])
def test_bad_grids_are_refused_with_details(grid, field, constraint):
    with pytest.raises(InvalidArgument) as err:
        sweeps.parse_grid(grid)
    assert details(err)["field"] == field and details(err)["constraint"] == constraint


def test_too_many_combinations_or_responses_are_refused():
    with pytest.raises(InvalidArgument) as err:
        sweeps.parse_grid({"temperature": {"min": 0, "max": 2, "step": 0.01},
                           "top_p": {"min": 0.1, "max": 1, "step": 0.1}})
    assert details(err)["field"] == "parameter_grid" and details(err)["value"] == 2010
    grid = {"temperature": {"min": 0.2, "max": 1.0, "step": 0.2}, "top_p": {"min": 0.7, "max": 1.0, "step": 0.1}}
    with pytest.raises(InvalidArgument) as err:
        sweeps.validate("s", "", "p", "m", grid, 10, "normal", None, max_responses=100)
    assert details(err)["field"] == "responses_per_combination"
    assert details(err)["constraint"] == "20 combination(s) x 10 is 200 responses; a sweep generates at most 100"
    ok = sweeps.validate("s", "", "p", "m", grid, 5, "", None, max_responses=100)
    assert (ok.total_combinations, ok.total_responses, ok.priority) == (20, 100, "normal")
    for bad in ({"priority": "urgent"}, {"per": 0}, {"seed": -1}):
        with pytest.raises(InvalidArgument):
            sweeps.validate("s", "", "p", "m", grid, bad.get("per", 1), bad.get("priority", "low"),
                            bad.get("seed"), max_responses=100)


def test_seeds_depend_only_on_the_base_and_the_position():
    seeds = {(c, i): sweeps.response_seed(42, c, i) for c in range(1, 21) for i in range(1, 4)}
    assert len(set(seeds.values())) == 60 and all(0 <= s < 2**31 for s in seeds.values())
    assert sweeps.response_seed(42, 3, 2) == seeds[(3, 2)]
    assert sweeps.response_seed(43, 3, 2) != seeds[(3, 2)]


def test_durations_and_eta():
    assert [sweeps.duration_text(s) for s in (1, 59, 61, 2700, 3600, 3900)] == ["1m", "1m", "2m", "45m", "1h",
                                                                               "1h5m"]
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    now = t0 + dt.timedelta(minutes=10)
    running = sweeps.eta("running", 60, 20, t0, None, 999, now)  # 20 in 10 min -> 40 more take 20 min
    assert (running.method, running.minutes, running.completion) == ("observed_rate", 20, now + dt.timedelta(
        minutes=20))
    queued = sweeps.eta("queued", 60, 0, None, None, 2700, now)
    assert (queued.method, queued.minutes) == ("engine_throughput", 45)
    over = sweeps.eta("completed", 60, 60, t0, now, 2700, now)
    assert (over.method, over.minutes, over.completion) == ("finished", 0, now)


# --- statistics ----------------------------------------------------------------------------------------------

DIMS = sweep_stats.DIMENSIONS


def make(combos: list[dict], qualities: dict[int, list[float]], creativity_of=lambda p, q: q) -> list[SweepResponse]:
    out, rid = [], 1
    for cid, qs in qualities.items():
        for i, q in enumerate(qs, start=1):
            p = combos[cid - 1]
            metrics = {d: q for d in DIMS} | {"creativity": creativity_of(p, q)}
            out.append(SweepResponse(rid, cid, i, sweeps.response_seed(1, cid, i), "completed", p, q, metrics,
                                     0.001 * i, 100 * i))
            rid += 1
    return out


def grid_2x2() -> list[dict]:
    return sweeps.parse_grid({"temperature": {"min": 0.5, "max": 1.0, "step": 0.5},
                              "top_p": {"min": 0.8, "max": 0.9, "step": 0.1}}).combinations()


def test_combination_statistics_recompute_by_hand():
    combos = grid_2x2()
    responses = make(combos, {1: [70.0, 74.0, 72.0], 2: [80.0, 90.0], 3: [60.0]})
    per = {c.combination_id: c for c in sweep_stats.combination_stats(responses, combos)}
    assert sorted(per) == [1, 2, 3]  # combination 4 has no scored response: not listed
    c1 = per[1]
    assert c1.n == 3 and c1.mean == pytest.approx(72.0) and c1.std == pytest.approx(statistics.stdev([70, 74, 72]))
    half = stats.t.ppf(0.975, 2) * statistics.stdev([70, 74, 72]) / math.sqrt(3)  # t(0.975, 2) = 4.303
    assert c1.ci == pytest.approx((72 - half, 72 + half))
    assert c1.ci[0] == pytest.approx(67.03, abs=0.01) and c1.ci[1] == pytest.approx(76.97, abs=0.01)
    assert per[3].ci is None and per[3].std == 0.0  # one response: no interval
    assert sweep_stats.ci_value(per[3]) is None
    assert sweep_stats.ci_value(c1) == {"level": 0.95, "lower": 67.03, "upper": 76.97, "method": "t"}
    assert c1.mean_response_time_ms == 200 and c1.total_cost == pytest.approx(0.006)
    assert c1.parameters == combos[0]


def test_correlations_are_pearson_and_spearman_with_p_values():
    combos = grid_2x2()
    rng = random.Random(3)
    # creativity rises with temperature (plus noise), quality does not depend on top_p.
    responses = make(combos, {c: [70 + rng.gauss(0, 3) for _ in range(5)] for c in range(1, 5)},
                     creativity_of=lambda p, q: 50 + 30 * p["temperature"] + rng.gauss(0, 2))
    found = {c.key: c for c in sweep_stats.correlations(responses)}
    t = [r.parameters["temperature"] for r in responses]
    cr = [r.metrics["creativity"] for r in responses]
    expected = stats.pearsonr(t, cr)
    got = found["temperature_vs_creativity"]
    assert got.pearson_r == pytest.approx(expected.statistic) and got.pearson_p == pytest.approx(expected.pvalue)
    assert got.spearman_rho == pytest.approx(stats.spearmanr(t, cr).statistic) and got.n == 20
    assert got.pearson_r > 0.8 and got.pearson_p < 0.001
    assert "top_p_vs_overall_quality" in found
    # Too few scored responses: nothing is computed.
    assert sweep_stats.correlations(responses[:2]) == []


def test_best_vs_runner_up_is_welch_s_t_test():
    combos = grid_2x2()
    responses = make(combos, {1: [70.0, 72.0, 71.0], 2: [90.0, 91.0, 89.5], 3: [88.0, 86.0, 90.0]})
    cmp, note = sweep_stats.compare_best(sweep_stats.combination_stats(responses, combos))
    expected = stats.ttest_ind([90.0, 91.0, 89.5], [88.0, 86.0, 90.0], equal_var=False)
    assert note == "" and cmp is not None
    assert (cmp.best, cmp.runner_up, cmp.n_best, cmp.n_runner_up) == (2, 3, 3, 3)
    assert cmp.statistic == pytest.approx(expected.statistic) and cmp.p_value == pytest.approx(expected.pvalue)
    assert cmp.significant == (expected.pvalue < 0.05)
    value = sweep_stats.comparison_value(cmp)
    assert value["test"] == "welch_t_test" and value["p_value"] == round(expected.pvalue, 6)


def test_insights_name_their_statistics_and_admit_thin_data():
    combos = grid_2x2()
    rng = random.Random(5)
    responses = make(combos, {c: [60 + 8 * c + rng.gauss(0, 1) for _ in range(4)] for c in range(1, 5)},
                     creativity_of=lambda p, q: 40 + 40 * p["temperature"] + rng.gauss(0, 1))
    a = sweep_stats.analyse(responses, combos, ("temperature", "top_p"))
    text = " ".join(a.insights)
    r = next(c for c in a.correlations if c.key == "temperature_vs_creativity")
    assert f"Pearson r={r.pearson_r:.2f}, p={r.pearson_p:.3g}" in text and "n=16" in text
    best = a.best
    assert best is not None and best.combination_id == 4
    assert f"Best combination 4 (temperature=1, top_p=0.9): mean quality {best.mean:.1f}" in text
    assert "Welch's t-test" in text and f"p={a.comparison.p_value:.3g}" in text  # type: ignore[union-attr]

    thin = sweep_stats.analyse(make(combos, {1: [70.0], 2: [75.0]}), combos, ("temperature", "top_p"))
    assert thin.insights[0] == "Too little data for correlations: n=2 scored responses (need at least 3)."
    assert any(s.startswith("Too little data to test whether combination 2 beats combination 1") for s in
               thin.insights)
    assert thin.comparison is None and sweep_stats.comparison_value(None) is None


def test_failed_and_unscored_responses_are_left_out_of_the_statistics():
    combos = grid_2x2()
    responses = make(combos, {1: [70.0, 80.0]})
    responses.append(SweepResponse(99, 1, 3, 0, "failed", combos[0], None, None, 0.0, 0))
    per = sweep_stats.combination_stats(responses, combos)
    assert per[0].n == 2 and per[0].mean == 75.0
