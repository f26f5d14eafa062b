"""Response rules and analyses of the experiments service (services/experiments/responses.py, analysis.py)."""

from __future__ import annotations

import datetime as dt

import pytest

from llmlab.runtime import FailedPrecondition, InvalidArgument
from services.experiments import analysis, responses
from services.experiments.repository import ExperimentRow
from services.experiments.response_repository import ResponseRecord

NOW = dt.datetime(2024, 10, 30, tzinfo=dt.UTC)


def experiment(**over) -> ExperimentRow:
    base = dict(id=1, uuid="u", name="e", description="", type="single", status="draft", model="m", prompt="p",
                parameters={"temperature": 0.8, "top_p": 0.9, "max_tokens": 64}, parameter_ranges=None,
                response_count=2, tags=[], favorited=False, archived=False, created_at=NOW, updated_at=NOW,
                quality_score=None, total_cost=0.0, duration_ms=None)
    return ExperimentRow(**{**base, **over})


def record(rid: int, quality: float, temperature: float, creativity: float = 80.0, **dims) -> ResponseRecord:
    metrics = {d: dims.get(d, 70.0) for d in analysis.DIMENSIONS}
    metrics["creativity"] = creativity
    return ResponseRecord(id=rid, experiment_id=1, content="x", model="m",
                          parameters={"temperature": temperature, "top_p": 0.9, "max_tokens": 64},
                          quality_metrics=metrics, overall_quality=quality, response_time_ms=100, prompt_tokens=5,
                          token_count=10, cost=0.001, created_at=NOW)


def test_grid_bounds_are_inclusive():
    combos = responses.combinations({"temperature_min": 0.2, "temperature_max": 1.0, "temperature_step": 0.2,
                                     "top_p_min": 0.7, "top_p_max": 1.0, "top_p_step": 0.1})
    assert len(combos) == 20  # 5 temperatures x 4 top_p values
    assert {c["temperature"] for c in combos} == {0.2, 0.4, 0.6, 0.8, 1.0}
    assert {c["top_p"] for c in combos} == {0.7, 0.8, 0.9, 1.0}


def test_a_plan_is_combinations_times_count_over_the_experiment_parameters():
    e = experiment(parameter_ranges={"temperature_min": 0.3, "temperature_max": 0.9, "temperature_step": 0.3})
    planned = responses.plan(e, {}, True, 2)
    assert [p.parameters["temperature"] for p in planned] == [0.3, 0.3, 0.6, 0.6, 0.9, 0.9]
    assert {p.parameters["max_tokens"] for p in planned} == {64}
    single = responses.plan(e, {"temperature": 0.1}, False, None)  # count defaults to response_count
    assert [p.parameters["temperature"] for p in single] == [0.1, 0.1]


@pytest.mark.parametrize(("kwargs", "error"), [
    ({"specific": {}, "generate_all": False, "count": 101}, InvalidArgument),
    ({"specific": {}, "generate_all": False, "count": 0}, InvalidArgument),
    ({"specific": {"temperature": 3.0}, "generate_all": False, "count": 1}, InvalidArgument),
    ({"specific": {"seed": 1}, "generate_all": False, "count": 1}, InvalidArgument),
    ({"specific": {}, "generate_all": True, "count": 1}, FailedPrecondition),  # no parameter_ranges
])
def test_bad_plans_are_refused(kwargs, error):
    with pytest.raises(error):
        responses.plan(experiment(), kwargs["specific"], kwargs["generate_all"], kwargs["count"])


def test_a_run_is_capped():
    e = experiment(parameter_ranges={"temperature_min": 0.0, "temperature_max": 2.0, "temperature_step": 0.1})
    with pytest.raises(InvalidArgument) as err:
        responses.plan(e, {}, True, 10)
    assert "21 combination(s) x 10 is 210 responses" in err.value.details["constraint"]


def test_compare_ids_and_lists():
    with pytest.raises(InvalidArgument):
        responses.compare_ids([1])
    with pytest.raises(InvalidArgument):
        responses.compare_ids([1, 1])
    assert responses.split_list(["a,b", " c ", "a", ""]) == ["a", "b", "c"]
    assert responses.preview("x" * 120) == "x" * 100 + "..."


def test_differences_and_impacts_from_the_numbers():
    recs = [record(1, 70.0, 0.2, specificity=50), record(2, 80.0, 0.5), record(3, 90.0, 0.8, specificity=90)]
    diff = analysis.differences(recs)
    assert diff.max_difference == 20.0 and diff.average_difference == pytest.approx(13.3)
    assert diff.most_varied_metric == "specificity"
    (impact,) = analysis.parameter_impacts(recs)
    assert impact.parameter == "temperature" and impact.r == pytest.approx(1.0) and impact.impact_score == "high"


def test_recommendations_name_their_numbers_and_say_when_data_is_thin():
    recs = [record(1, 70.0, 0.2), record(2, 80.0, 0.5), record(3, 90.0, 0.8)]
    advice = analysis.recommendations(recs, analysis.parameter_impacts(recs))
    assert advice[0] == ("Response 3 scores highest overall (90.0, 10.0 points above the mean of 80.0 over 3 "
                         "responses); its strongest dimension is creativity (80.0).")
    assert advice[1].startswith("Quality rises with temperature here (r = 1.00, p = 0.000, n = 3)")
    two = analysis.recommendations(recs[:2], [])
    assert two[1] == "2 responses are too few to relate temperature to quality (3 or more are needed)."
    same = [record(1, 70.0, 0.5), record(2, 75.0, 0.5)]
    assert "share their sampling parameters" in analysis.recommendations(same, [])[1]


def test_temperature_effect_splits_at_the_median():
    recs = [record(1, 70, 0.2, creativity=60), record(2, 75, 0.3, creativity=62), record(3, 80, 0.5),
            record(4, 85, 0.8, creativity=90), record(5, 90, 0.9, creativity=92)]
    effect = analysis.temperature_effect(recs)
    assert effect.high == [4, 5] and effect.low == [1, 2] and effect.difference == 30.0
    assert effect.impact_on_creativity == "positive"  # Mann-Whitney with 2 vs 2 cannot reach p < 0.05
    assert analysis.temperature_effect([record(1, 70, 0.5), record(2, 80, 0.5)]) is None


def test_overview_counts_failed_generations_in_the_success_rate():
    o = analysis.overview([record(1, 70.0, 0.2), record(2, 80.0, 0.5), record(3, 90.0, 0.8)], failed=1)
    assert o.total_responses == 3 and o.success_rate == 75.0
    assert (o.quality.average, o.quality.best, o.quality.worst) == (80.0, 90.0, 70.0)
    groups = analysis.parameter_performance([record(1, 70.0, 0.2), record(2, 80.0, 0.2), record(3, 90.0, 0.8)])
    assert [(g.parameters["temperature"], g.average_quality, g.response_count) for g in groups] == [
        (0.8, 90.0, 1), (0.2, 75.0, 2)]
