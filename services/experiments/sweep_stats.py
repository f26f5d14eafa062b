"""Statistics of a sweep's stored responses (docs/sweeps.md "Statistics"), all from scipy and recomputable from the
responses: per combination mean, sample standard deviation and a 95 % Student's t confidence interval; parameter vs
metric correlations (Pearson and Spearman, two-sided p-values); best vs runner-up with Welch's t-test; and insight
sentences generated from those numbers, each naming its statistic, or saying that the data is too thin. No I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
METRICS = ("overall_quality", *DIMENSIONS)
SWEPT = ("temperature", "top_p", "frequency_penalty", "presence_penalty")
CONFIDENCE = 0.95
ALPHA = 0.05
MIN_CI = 2  # a t-interval needs n - 1 >= 1 degrees of freedom
MIN_CORRELATION = 3  # two points always correlate perfectly
MIN_TEST = 2  # per group, for Welch's t-test (a variance each)


@dataclass
class SweepResponse:
    """One stored response of a sweep, as the statistics see it."""

    response_id: int
    combination_id: int
    iteration: int
    seed: int
    status: str  # completed | failed
    parameters: dict[str, Any]
    overall_quality: float | None
    metrics: dict[str, float] | None
    cost: float
    response_time_ms: int

    @property
    def scored(self) -> bool:
        return self.status == "completed" and self.overall_quality is not None and self.metrics is not None


@dataclass
class CombinationStats:
    combination_id: int
    parameters: dict[str, Any]
    responses: list[SweepResponse]
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1), 0 for one response
    ci: tuple[float, float] | None  # 95 % t-interval, None below MIN_CI
    breakdown: dict[str, float]
    mean_response_time_ms: float
    total_cost: float


@dataclass
class Correlation:
    parameter: str
    metric: str
    pearson_r: float
    pearson_p: float
    spearman_rho: float
    spearman_p: float
    n: int

    @property
    def key(self) -> str:
        return f"{self.parameter}_vs_{self.metric}"


@dataclass
class Comparison:
    best: int
    runner_up: int
    statistic: float
    p_value: float
    n_best: int
    n_runner_up: int
    test: str = "welch_t_test"

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA


@dataclass
class Analysis:
    combinations: list[CombinationStats]
    correlations: list[Correlation] = field(default_factory=list)
    comparison: Comparison | None = None
    comparison_note: str = ""
    insights: list[str] = field(default_factory=list)

    @property
    def best(self) -> CombinationStats | None:
        return ranked(self.combinations)[0] if self.combinations else None


def _r(x: float, digits: int = 3) -> float:
    return round(float(x), digits)


def t_interval(values: Sequence[float]) -> tuple[float, float] | None:
    """mean +- t(0.975, n-1) x s / sqrt(n) (scipy.stats.t.interval with the standard error)."""
    n = len(values)
    if n < MIN_CI:
        return None
    mean = sum(values) / n
    sem = stats.sem(values)  # s / sqrt(n), ddof=1
    if sem == 0:
        return (mean, mean)
    lo, hi = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=sem)
    return float(lo), float(hi)


def combination_stats(responses: Sequence[SweepResponse], combos: Sequence[dict[str, Any]]) -> list[CombinationStats]:
    """One entry per combination with at least one scored response, in combination order."""
    by: dict[int, list[SweepResponse]] = {}
    for r in responses:
        if r.scored:
            by.setdefault(r.combination_id, []).append(r)
    out = []
    for cid in sorted(by):
        rs = sorted(by[cid], key=lambda r: r.iteration)
        q = [float(r.overall_quality) for r in rs]  # type: ignore[arg-type]
        n = len(q)
        mean = sum(q) / n
        std = float(stats.tstd(q)) if n > 1 else 0.0
        breakdown = {d: sum(r.metrics.get(d, 0.0) for r in rs) / n for d in DIMENSIONS}  # type: ignore[union-attr]
        out.append(CombinationStats(
            combination_id=cid, parameters=combos[cid - 1] if 0 < cid <= len(combos) else rs[0].parameters,
            responses=rs, n=n, mean=mean, std=std, ci=t_interval(q), breakdown=breakdown,
            mean_response_time_ms=sum(r.response_time_ms for r in rs) / n, total_cost=sum(r.cost for r in rs)))
    return out


def ranked(combos: Sequence[CombinationStats]) -> list[CombinationStats]:
    """Highest mean first; ties to the lower combination id."""
    return sorted(combos, key=lambda c: (-c.mean, c.combination_id))


def correlations(responses: Sequence[SweepResponse]) -> list[Correlation]:
    """Every swept parameter that varies against every metric that varies, over the scored responses."""
    scored = [r for r in responses if r.scored]
    if len(scored) < MIN_CORRELATION:
        return []
    out = []
    for p in SWEPT:
        xs = [float(r.parameters.get(p, 0.0)) for r in scored]
        if len(set(xs)) < 2:
            continue
        for m in METRICS:
            ys = [float(r.overall_quality if m == "overall_quality" else r.metrics.get(m, 0.0))  # type: ignore
                  for r in scored]
            if len(set(ys)) < 2:
                continue
            pr, sr = stats.pearsonr(xs, ys), stats.spearmanr(xs, ys)
            if not (math.isfinite(pr.statistic) and math.isfinite(sr.statistic)):
                continue
            out.append(Correlation(p, m, float(pr.statistic), float(pr.pvalue), float(sr.statistic),
                                   float(sr.pvalue), len(scored)))
    return out


def compare_best(combos: Sequence[CombinationStats]) -> tuple[Comparison | None, str]:
    """Welch's t-test (scipy.stats.ttest_ind, equal_var=False) of the best combination against the runner-up."""
    order = ranked(combos)
    if len(order) < 2:
        return None, f"Too little data to compare combinations: {len(order)} combination(s) with scored responses."
    best, second = order[0], order[1]
    if best.n < MIN_TEST or second.n < MIN_TEST:
        return None, (f"Too little data to test whether combination {best.combination_id} beats combination "
                      f"{second.combination_id}: n={best.n} and n={second.n} scored responses (Welch's t-test "
                      f"needs at least {MIN_TEST} each).")
    a = [float(r.overall_quality) for r in best.responses]  # type: ignore[arg-type]
    b = [float(r.overall_quality) for r in second.responses]  # type: ignore[arg-type]
    res = stats.ttest_ind(a, b, equal_var=False)
    if not math.isfinite(res.statistic):
        return None, (f"Combinations {best.combination_id} and {second.combination_id} cannot be told apart by "
                      f"Welch's t-test: both have zero variance (n={best.n}, n={second.n}).")
    return Comparison(best.combination_id, second.combination_id, float(res.statistic), float(res.pvalue),
                      best.n, second.n), ""


def _strength(r: float) -> str:
    a = abs(r)
    return "strongly" if a >= 0.7 else "moderately" if a >= 0.4 else "weakly"


def _params_text(params: dict[str, Any], names: Sequence[str]) -> str:
    return ", ".join(f"{n}={params[n]:g}" for n in names if n in params)


def insights(analysis: Analysis, swept: Sequence[str], total_scored: int) -> list[str]:
    """Sentences generated from the computed statistics; each names its statistic, p-value and n."""
    out: list[str] = []
    if total_scored < MIN_CORRELATION:
        out.append(f"Too little data for correlations: n={total_scored} scored responses (need at least "
                   f"{MIN_CORRELATION}).")
    elif not swept:
        out.append("No parameter varies in this sweep, so no parameter correlation can be computed.")
    else:
        significant = [c for c in analysis.correlations if c.pearson_p < ALPHA]
        for c in sorted(significant, key=lambda c: (c.pearson_p, -abs(c.pearson_r)))[:4]:
            direction = "increases" if c.pearson_r > 0 else "decreases"
            out.append(f"{c.metric.replace('_', ' ').capitalize()} {direction} with {c.parameter} "
                       f"({_strength(c.pearson_r)}): Pearson r={c.pearson_r:.2f}, p={c.pearson_p:.3g}, "
                       f"Spearman rho={c.spearman_rho:.2f}, n={c.n}.")
        for p in swept:
            q = next((c for c in analysis.correlations if c.parameter == p and c.metric == "overall_quality"), None)
            if q is not None and q.pearson_p >= ALPHA:
                out.append(f"No significant linear relation between {p} and overall quality: Pearson "
                           f"r={q.pearson_r:.2f}, p={q.pearson_p:.3g}, n={q.n} (alpha={ALPHA}).")
    best = analysis.best
    if best is not None:
        ci = (f", 95% t-interval [{best.ci[0]:.1f}, {best.ci[1]:.1f}]" if best.ci is not None
              else " (one response: no confidence interval)")
        out.append(f"Best combination {best.combination_id} ({_params_text(best.parameters, swept) or 'fixed'}): "
                   f"mean quality {best.mean:.1f}{ci}, n={best.n}.")
    cmp = analysis.comparison
    if cmp is not None:
        verdict = "significantly better than" if cmp.significant else "not significantly different from"
        out.append(f"Combination {cmp.best} is {verdict} the runner-up, combination {cmp.runner_up}: Welch's t-test "
                   f"t={cmp.statistic:.2f}, p={cmp.p_value:.3g}, n={cmp.n_best} vs {cmp.n_runner_up} "
                   f"(alpha={ALPHA}).")
    elif analysis.comparison_note:
        out.append(analysis.comparison_note)
    return out


def analyse(responses: Sequence[SweepResponse], combos: Sequence[dict[str, Any]], swept: Sequence[str]) -> Analysis:
    per = combination_stats(responses, combos)
    a = Analysis(per, correlations(responses))
    a.comparison, a.comparison_note = compare_best(per)
    a.insights = insights(a, swept, sum(1 for r in responses if r.scored))
    return a


def ci_value(c: CombinationStats) -> dict[str, Any] | None:
    if c.ci is None:
        return None
    return {"level": CONFIDENCE, "lower": _r(c.ci[0], 2), "upper": _r(c.ci[1], 2), "method": "t"}


def comparison_value(cmp: Comparison | None) -> dict[str, Any] | None:
    if cmp is None:
        return None
    return {"test": cmp.test, "best_combination_id": cmp.best, "runner_up_combination_id": cmp.runner_up,
            "statistic": _r(cmp.statistic, 4), "p_value": _r(cmp.p_value, 6), "significant": cmp.significant,
            "n_best": cmp.n_best, "n_runner_up": cmp.n_runner_up}
