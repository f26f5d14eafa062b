"""Statistics of the analytics answers: Pearson's r and its p-value from sufficient statistics, the labels the API
documents, the Pareto frontier, trends and percentiles of the latency sketch (docs/analytics.md "Statistics")."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from scipy import stats as sps

from .readmodel import bin_value

MIN_PAIRS = 3  # Pearson's r of fewer than three pairs has no p-value (n - 2 degrees of freedom)


@dataclass(frozen=True)
class Sums:
    """n, Σx, Σy, Σx², Σy², Σxy of (x, y) pairs; sums merge by addition."""

    n: float
    sx: float
    sy: float
    sxx: float
    syy: float
    sxy: float


@dataclass(frozen=True)
class Correlation:
    r: float
    p_value: float
    n: int


def pearson(s: Sums) -> Correlation | None:
    """Pearson's r with its two-sided p-value (t = r·√((n-2)/(1-r²)), Student's t with n-2 degrees of freedom, as
    scipy.stats.pearsonr); None with fewer than 3 pairs or when either side does not vary."""
    n = round(s.n)
    if n < MIN_PAIRS:
        return None
    vx = s.sxx - s.sx * s.sx / n
    vy = s.syy - s.sy * s.sy / n
    # Σx² - (Σx)²/n cancels catastrophically when x is constant: treat a variance below 1e-12 of Σx² as none.
    if vx <= 1e-12 * max(abs(s.sxx), 1.0) or vy <= 1e-12 * max(abs(s.syy), 1.0):
        return None
    r = (s.sxy - s.sx * s.sy / n) / math.sqrt(vx * vy)
    r = max(-1.0, min(1.0, r))
    if n == 2 or abs(r) == 1.0:
        return Correlation(r, 0.0, n)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    return Correlation(r, float(2 * sps.t.sf(abs(t), n - 2)), n)


def strength(r: float) -> str:
    a = abs(r)
    return "strong" if a >= 0.7 else "moderate" if a >= 0.4 else "weak" if a >= 0.2 else "negligible"


def significance(p: float) -> str:
    return "highly_significant" if p < 0.01 else "significant" if p < 0.05 else "not_significant"


def interpretation(r: float) -> str:
    s = strength(r)
    return "negligible" if s == "negligible" else f"{s}_{'positive' if r > 0 else 'negative'}"


def sensitivity(impact: float) -> str:
    return "high" if impact >= 0.5 else "medium" if impact >= 0.2 else "low"


def trend(current: float, previous: float) -> float:
    """Percent change against the previous period; 0 when the previous period has nothing to compare with."""
    if previous == 0:
        return 0.0
    return round((current - previous) / abs(previous) * 100, 1)


P = TypeVar("P")


def pareto_frontier(points: Sequence[P], key: Callable[[P], tuple[float, float, float]]) -> list[P]:
    """The points no other point dominates over (quality up, cost down, latency down): q >=, c <=, l <= and one
    strictly. Equal points do not dominate each other, so duplicates on the frontier are all kept. Best quality
    first.

    Swept in (quality desc, cost, latency) order: whatever dominates a point sorts before it, and whatever is
    dominated is dominated by a frontier point too, so each point is compared with the frontier found so far only
    (O(n x frontier), not O(n^2))."""
    vals = [key(p) for p in points]
    order = sorted(range(len(points)), key=lambda i: (-vals[i][0], vals[i][1], vals[i][2]))
    front: list[int] = []
    fq: list[float] = []
    fc: list[float] = []
    fl: list[float] = []
    for i in order:
        q, c, lat = vals[i]
        dominated = any(q2 >= q and c2 <= c and l2 <= lat and (q2 > q or c2 < c or l2 < lat)
                        for q2, c2, l2 in zip(fq, fc, fl, strict=True))
        if not dominated:
            front.append(i)
            fq.append(q)
            fc.append(c)
            fl.append(lat)
    return [points[i] for i in front]


def sketch_percentile(bins: Mapping[int, int], q: float) -> float:
    """The q-quantile (0..1) of a latency sketch (bin -> count): the representative value of the bin holding the
    rank ⌈q·n⌉ (nearest-rank), within the sketch's relative accuracy of the exact nearest-rank percentile."""
    total = sum(bins.values())
    if total == 0:
        return 0.0
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in sorted(bins):
        seen += bins[b]
        if seen >= rank:
            return bin_value(b)
    return bin_value(max(bins))


def weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """The smallest value whose cumulative weight reaches q of the total."""
    pairs = sorted(zip(values, weights, strict=True))
    total = sum(w for _, w in pairs)
    acc = 0.0
    for v, w in pairs:
        acc += w
        if acc >= q * total:
            return v
    return pairs[-1][0]
