"""The analytics statistics with constructed data: r and p equal scipy's on the raw pairs, the labels' thresholds,
the Pareto frontier is exactly the non-dominated set, the latency sketch's percentiles are within its accuracy."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from scipy import stats as sps

from services.analytics import readmodel, stats
from services.analytics.stats import Sums


def sums(x, y) -> Sums:
    x, y = np.asarray(x, float), np.asarray(y, float)
    return Sums(len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())


@pytest.mark.parametrize("n", [3, 4, 10, 200])
def test_pearson_from_sums_equals_scipy_on_the_pairs(n):
    rng = np.random.default_rng(n)
    x = rng.uniform(0, 2, n)
    y = 40 + 10 * x + rng.normal(0, 5, n)
    c = stats.pearson(sums(x, y))
    ref = sps.pearsonr(x, y)
    assert c.n == n
    assert c.r == pytest.approx(ref.statistic, abs=1e-9)
    assert c.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_sums_merge_by_addition():
    x, y = [0.1, 0.5, 0.9, 1.3, 0.2, 0.7], [50, 60, 70, 85, 52, 66]
    a, b = sums(x[:3], y[:3]), sums(x[3:], y[3:])
    merged = Sums(*(getattr(a, f) + getattr(b, f) for f in ("n", "sx", "sy", "sxx", "syy", "sxy")))
    assert stats.pearson(merged).r == pytest.approx(sps.pearsonr(x, y).statistic)


def test_too_few_pairs_or_a_constant_side_give_no_correlation():
    assert stats.pearson(sums([1, 2], [3, 4])) is None
    assert stats.pearson(sums([0.7, 0.7, 0.7, 0.7], [1, 2, 3, 4])) is None
    assert stats.pearson(sums([0.1, 0.2, 0.3], [5, 5, 5])) is None


def test_labels_follow_the_documented_thresholds():
    assert [stats.strength(r) for r in (0.7, -0.69, 0.4, 0.2, 0.19)] == [
        "strong", "moderate", "moderate", "weak", "negligible"]
    assert [stats.significance(p) for p in (0.009, 0.01, 0.049, 0.05)] == [
        "highly_significant", "significant", "significant", "not_significant"]
    assert stats.interpretation(-0.75) == "strong_negative" and stats.interpretation(0.45) == "moderate_positive"
    assert stats.interpretation(0.1) == "negligible"
    assert [stats.sensitivity(i) for i in (0.5, 0.2, 0.19)] == ["high", "medium", "low"]


def test_trend_is_the_percent_change_and_zero_without_a_previous_period():
    assert stats.trend(110, 100) == 10.0 and stats.trend(80, 100) == -20.0 and stats.trend(5, 0) == 0.0


def dominated(p, q) -> bool:
    """Brute force: q dominates p over (quality up, cost down, latency down)."""
    return q[0] >= p[0] and q[1] <= p[1] and q[2] <= p[2] and q != p


def test_pareto_frontier_of_constructed_points():
    points = [
        (90, 0.05, 3.0),  # best quality
        (80, 0.01, 2.0),  # cheapest and fastest
        (85, 0.02, 2.5),  # in between: on the frontier
        (85, 0.03, 2.5),  # dominated by the previous one (same quality and speed, dearer)
        (70, 0.01, 2.0),  # dominated by (80, 0.01, 2.0)
        (89, 0.05, 3.0),  # dominated by the first
        (60, 0.005, 4.0),  # cheapest of all: on the frontier
        (80, 0.01, 2.0),  # an exact duplicate of a frontier point: kept, neither dominates the other
    ]
    front = stats.pareto_frontier(points, key=lambda p: p)
    assert front == [(90, 0.05, 3.0), (85, 0.02, 2.5), (80, 0.01, 2.0), (80, 0.01, 2.0), (60, 0.005, 4.0)]


def test_pareto_frontier_equals_brute_force_on_random_points():
    rng = random.Random(7)
    for _ in range(20):
        pts = [(rng.randint(50, 60), rng.choice([0.01, 0.02, 0.03]), rng.choice([1.0, 2.0])) for _ in range(30)]
        expected = [p for p in pts if not any(dominated(p, q) for q in pts)]
        assert sorted(stats.pareto_frontier(pts, key=lambda p: p)) == sorted(expected)
        front = stats.pareto_frontier(pts, key=lambda p: p)
        for a, b in itertools.permutations(front, 2):
            assert not dominated(a, b)


def test_sketch_percentiles_are_within_one_percent_of_the_exact_ones():
    rng = np.random.default_rng(3)
    latencies = rng.lognormal(6, 1, 5000)
    bins: dict[int, int] = {}
    for v in latencies:
        b = readmodel.latency_bin(float(v))
        bins[b] = bins.get(b, 0) + 1
    ordered = np.sort(latencies)
    for q in (0.5, 0.95, 0.99):
        exact = ordered[int(np.ceil(q * len(ordered))) - 1]  # nearest rank
        assert stats.sketch_percentile(bins, q) == pytest.approx(exact, rel=readmodel.SKETCH_ALPHA)
    assert stats.sketch_percentile({}, 0.5) == 0.0


def test_parameter_buckets_and_principals():
    assert readmodel.bucket(0.73) == 0.75 and readmodel.bucket(0.3) == 0.3 and readmodel.bucket(0.6000001) == 0.6
    assert readmodel.combo({"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}) == (0.7, 0.9, 64, 0.0, 0.0)
    assert readmodel.combo({"temperature": 0.7}) is None
    assert readmodel.parse_principal("user:u1/key:k9") == ("u1", "k9")
    assert readmodel.parse_principal("user:u1") == ("u1", "")
    assert readmodel.parse_principal("") == ("", "")
