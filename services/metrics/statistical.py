"""Statistics over stored scores with scipy: significance of a quality difference, trends, ranges, rankings."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

from .scoring import DIMENSIONS

METRICS = ("overall_quality", *DIMENSIONS)
ALPHA = 0.05


@dataclass(frozen=True)
class Significance:
    """A test's outcome, or why none was run (p_value None)."""

    test: str
    p_value: float | None
    statistic: float | None
    samples: int
    note: str

    @property
    def significant(self) -> bool | None:
        return None if self.p_value is None else self.p_value < ALPHA


def quality_difference(ids: Sequence[int], dimensions: Sequence[Mapping[str, float]]) -> Significance:
    """Do these responses differ in quality? Each response's six dimension scores are paired samples (the same six
    measurements for every response): Friedman's test for 3+ responses, Wilcoxon's signed-rank test for 2."""
    columns = [[float(d[m]) for m in DIMENSIONS] for d in dimensions]
    k = len(DIMENSIONS)
    if len(columns) < 2:
        return Significance("none", None, None, k, "A comparison needs at least two responses.")
    if len(columns) == 2:
        diffs = [a - b for a, b in zip(columns[0], columns[1], strict=True)]
        if all(abs(x) < 1e-9 for x in diffs):
            return Significance("none", None, None, k, (
                f"Responses {ids[0]} and {ids[1]} score the same on all {k} dimensions: there is no difference "
                "to test."))
        res = stats.wilcoxon(columns[0], columns[1])
        test, verb = "wilcoxon", "Wilcoxon signed-rank test"
    else:
        if all(len({round(c[i], 6) for c in columns}) == 1 for i in range(k)):
            return Significance("none", None, None, k, (
                f"All {len(columns)} responses score the same on every dimension: there is no difference to test."))
        res = stats.friedmanchisquare(*columns)
        test, verb = "friedman", "Friedman test"
    p = float(res.pvalue)
    statistic = float(res.statistic)
    if not math.isfinite(p):
        return Significance("none", None, None, k, f"The {verb} is undefined for these scores.")
    p = round(p, 4)
    outcome = "differ significantly" if p < ALPHA else "do not differ significantly"
    return Significance(test, p, round(statistic, 4), k, (
        f"{verb} over the {k} dimension scores of {len(columns)} responses: p = {p:.4f}, so their quality scores "
        f"{outcome} at the {ALPHA:g} level."))


def metric_range(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, max, max - min): `metric_ranges.variance` is the spread max - min (94.2 - 82.1 = 12.1)."""
    lo, hi = min(values), max(values)
    return lo, hi, round(hi - lo, 1)


def ranking(ids: Sequence[int], values: Sequence[float]) -> list[int]:
    """Ids best first; ties keep the request order."""
    order = sorted(range(len(ids)), key=lambda i: (-values[i], i))
    return [ids[i] for i in order]


PERIODS = {"7d": 7, "30d": 30, "90d": 90, "1y": 365}


@dataclass(frozen=True)
class Trend:
    """The fitted direction of a daily series."""

    overall_trend: str
    trend_percentage: float
    slope: float | None
    p_value: float | None
    note: str


def trend(days: Sequence[dt.date], values: Sequence[float]) -> Trend:
    """Least-squares line through (day, daily mean) (scipy.stats.linregress): trend_percentage is the fitted change
    from the first to the last day, relative to the fitted first value; improving above +1 %, declining below -1 %."""
    if len(days) < 3:
        return Trend("stable", 0.0, None, None, (
            f"{len(days)} day(s) with scored responses: at least 3 are needed to fit a trend."))
    x = [(d - days[0]).days for d in days]
    fit = stats.linregress(x, values)
    start = fit.intercept
    end = fit.intercept + fit.slope * x[-1]
    pct = round((end - start) / start * 100, 1) if start > 0 else 0.0
    direction = "improving" if pct > 1 else "declining" if pct < -1 else "stable"
    p = float(fit.pvalue) if math.isfinite(fit.pvalue) else None
    note = (f"Linear fit over {len(days)} days: {fit.slope:+.2f} points per day, {pct:+.1f} % from the first to the "
            f"last day" + (f" (p = {p:.4f} for a non-zero slope)." if p is not None else "."))
    return Trend(direction, pct, round(float(fit.slope), 4), round(p, 4) if p is not None else None, note)
