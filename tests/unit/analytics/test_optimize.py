"""Optimisation with constructed buckets: the fitted surface ranks the known optimum first, constraints filter and
are validated, sensitivity and the frontier come from the data, too little data is said."""

from __future__ import annotations

import pytest

from llmlab.runtime import InvalidArgument
from services.analytics import analysis, optimize
from services.analytics.repository import Combo
from services.analytics.stats import Sums


def combo(t: float, quality: float, cost: float = 0.01, seconds: float = 1.0, n: int = 10, mt: int = 64) -> Combo:
    return Combo(model="m", parameters={"temperature": t, "top_p": 0.9, "max_tokens": mt, "frequency_penalty": 0.0,
                                        "presence_penalty": 0.0},
                 responses=n, cost=cost * n, time_ms=seconds * 1000 * n, scored=n, quality_sum=quality * n,
                 quality_sq=quality * quality * n, creativity_sum=(100 * t) * n, experiments=2)


# Quality peaks at temperature 0.7; cost grows with temperature.
GRID = [combo(t, 90 - 60 * (t - 0.7) ** 2, cost=0.01 + 0.01 * t, seconds=1 + t) for t in
        (0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3)]


def test_the_fitted_surface_ranks_the_optimum_first():
    recs = optimize.fit_and_rank(GRID, "quality")
    assert recs[0].combo.parameters["temperature"] == 0.7
    assert all(0 <= r.confidence <= 1 for r in recs)
    assert optimize.fit_and_rank(GRID, "cost")[0].combo.parameters["temperature"] == 0.1
    assert optimize.fit_and_rank(GRID, "creativity")[0].combo.parameters["temperature"] == 1.3


def test_constraints_filter_the_buckets_and_too_little_data_is_said():
    c = optimize.parse_constraints('{"temperature": {"min": 0.8}, "max_cost": 0.05}')
    ins = optimize.insights(GRID, {}, "quality", c)
    assert ins.recommendations[0].combo.parameters["temperature"] == 0.9
    assert all(r.combo.parameters["temperature"] >= 0.8 for r in ins.recommendations)
    few = optimize.insights(GRID[:2], {}, "quality", optimize.Constraints())
    assert few.recommendations == [] and "Too little data" in few.notes[0]


def test_the_frontier_is_over_the_admitted_buckets():
    ins = optimize.insights(GRID, {}, "quality", optimize.Constraints())
    # Cheaper and faster with falling temperature, best quality at 0.7: 0.1..0.7 are on the frontier, the rest not.
    assert sorted(c.parameters["temperature"] for c in ins.frontier) == [0.1, 0.3, 0.5, 0.7]


def test_sensitivity_uses_the_pairs_and_the_top_quartile():
    pairs = {("temperature", "overall_quality"): Sums(4, 2.0, 300.0, 1.5, 22600.0, 155.0)}
    sens = optimize.sensitivity(pairs, GRID, "quality")
    assert set(sens) == {"temperature"}
    lo, hi = sens["temperature"]["optimal_range"]
    assert lo <= 0.7 <= hi and sens["temperature"]["sensitivity"] in ("high", "medium", "low")


@pytest.mark.parametrize("raw", ["[1]", "{", '{"temp": 1}', '{"temperature": {"min": 1, "max": 0.5}}',
                                 '{"temperature": 0.5}', '{"max_cost": "cheap"}', '{"max_cost": -1}',
                                 '{"model": ""}'])
def test_malformed_constraints_are_refused(raw):
    with pytest.raises(InvalidArgument):
        optimize.parse_constraints(raw)


def test_unknown_objective_and_period_are_refused():
    with pytest.raises(InvalidArgument):
        optimize.objective_of("fastest")
    with pytest.raises(InvalidArgument):
        analysis.Period.parse("1y", None)  # type: ignore[arg-type]
    assert optimize.objective_of("") == "quality"


def test_optimal_ranges_are_the_top_quartile_buckets():
    ranges = analysis.optimal_ranges(GRID)
    assert ranges == {"temperature": (0.5, 0.9)}  # 0.5, 0.7, 0.9 reach the 75th percentile of the means


def test_insights_say_when_data_is_too_little():
    assert analysis.insights([], [], 2)[0].startswith("Too little data")
    assert analysis.insights([], [], 30)[0].startswith("No correlation is significant")
