"""Statistics of the metrics service (services/metrics/statistical.py) against scipy's own numbers and thin data."""

from __future__ import annotations

import datetime as dt

import pytest
from scipy import stats

from services.metrics import reference, statistical

DIMS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")


def scores(*values: float) -> dict[str, float]:
    return dict(zip(DIMS, values, strict=True))


def test_three_responses_use_friedman_over_the_six_dimensions():
    a, b, c = scores(90, 91, 92, 93, 94, 95), scores(80, 81, 82, 83, 84, 85), scores(70, 71, 72, 73, 74, 75)
    sig = statistical.quality_difference([1, 2, 3], [a, b, c])
    expected = stats.friedmanchisquare(list(a.values()), list(b.values()), list(c.values()))
    assert sig.test == "friedman" and sig.samples == 6
    assert sig.p_value == round(expected.pvalue, 4) and sig.p_value < 0.05 and sig.significant is True
    assert f"p = {sig.p_value:.4f}" in sig.note and "differ significantly" in sig.note


def test_two_responses_use_wilcoxon_and_a_small_difference_is_not_significant():
    a, b = scores(80, 70, 90, 60, 85, 75), scores(81, 69, 90.5, 61, 84, 75.5)
    sig = statistical.quality_difference([4, 5], [a, b])
    assert sig.test == "wilcoxon" and sig.significant is False
    assert sig.p_value == round(stats.wilcoxon(list(a.values()), list(b.values())).pvalue, 4)


def test_identical_scores_are_too_thin_for_a_test_and_the_note_says_so():
    same = scores(80, 80, 80, 80, 80, 80)
    for ids, rows in (([1, 2], [same, same]), ([1, 2, 3], [same, same, same])):
        sig = statistical.quality_difference(ids, rows)
        assert sig.test == "none" and sig.p_value is None and sig.significant is None
        assert "no difference to test" in sig.note


def test_ranges_and_rankings():
    assert statistical.metric_range([82.1, 94.2, 90.0]) == (82.1, 94.2, 12.1)
    assert statistical.ranking([445, 446, 447], [94.2, 82.1, 90.0]) == [445, 447, 446]
    assert statistical.ranking([1, 2], [50.0, 50.0]) == [1, 2]  # ties keep the request order


def test_trend_fits_a_line_and_needs_three_days():
    days = [dt.date(2024, 10, 1) + dt.timedelta(days=i) for i in range(5)]
    rising = statistical.trend(days, [80, 81, 82, 83, 84])
    assert rising.overall_trend == "improving" and rising.slope == pytest.approx(1.0)
    assert rising.trend_percentage == 5.0  # 80 -> 84 fitted
    assert statistical.trend(days, [84, 83, 82, 81, 80]).overall_trend == "declining"
    assert statistical.trend(days, [80, 80.1, 80, 80.1, 80]).overall_trend == "stable"
    thin = statistical.trend(days[:2], [80, 90])
    assert thin.slope is None and thin.p_value is None and thin.trend_percentage == 0 and "at least 3" in thin.note


def test_reference_metrics():
    r = reference.compute([
        reference.Sample("The cat sat on the mat.", ["the cat sat on the mat"], [-0.5, -1.5]),
        reference.Sample("A dog barked.", ["The cat sat."]),
        reference.Sample("No references here.", [], [-1.0]),
    ])
    assert r.accuracy == 0.5  # normalised exact match on the two samples with references
    # Exact match normalises case and punctuation; sacreBLEU (13a tokenisation) does not.
    assert r.samples[0].accuracy == 1.0 and 0 < r.samples[0].bleu < 1 and r.samples[0].rouge_l == 1.0
    same = reference.compute([reference.Sample("The cat sat on the mat.", ["The cat sat on the mat."])])
    assert same.bleu == pytest.approx(1.0) and same.perplexity is None
    assert r.samples[1].rouge_l < 0.5 and r.rouge_1 is not None and 0 < r.bleu < 1
    assert r.perplexity == pytest.approx(2.718281828, rel=1e-6)  # exp(3 / 3)
    assert r.samples[2].accuracy is None and r.samples[2].perplexity == pytest.approx(2.718281828, rel=1e-6)
    assert r.avg_response_length == pytest.approx((6 + 3 + 3) / 3)
