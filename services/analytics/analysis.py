"""The dashboard and the correlation analysis, computed from the read model's rollups (docs/analytics.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from llmlab.runtime import validation_error

from . import stats
from .readmodel import METRICS, PARAMETERS
from .repository import AnalyticsRepository, Combo, Scope
from .stats import Correlation, Sums

PERIODS = {"7d": 7, "30d": 30, "90d": 90}
EXPERIMENT_TYPES = ("single", "batch")
TOP_QUARTILE = 0.75
LABELS = {"overall_quality": "overall quality", "length_appropriateness": "length appropriateness",
          "top_p": "top_p", "max_tokens": "max_tokens", "frequency_penalty": "frequency penalty",
          "presence_penalty": "presence penalty", "response_time_ms": "response time"}


def _label(name: str) -> str:
    return LABELS.get(name, name)


def split_list(values: list[str]) -> list[str]:
    """`?models=a&models=b` and `?models=a,b` alike."""
    return [v.strip() for raw in values for v in raw.split(",") if v.strip()]


@dataclass(frozen=True)
class Period:
    """The last `days` UTC days ending today, and the same number of days before them."""

    days: int
    today: dt.date

    @classmethod
    def parse(cls, raw: str, now: dt.datetime) -> Period:
        raw = raw or "30d"
        if raw not in PERIODS:
            raise validation_error("period", raw, f"must be one of {', '.join(PERIODS)}")
        return cls(PERIODS[raw], now.date())

    @property
    def start(self) -> dt.date:
        return self.today - dt.timedelta(days=self.days - 1)

    @property
    def previous(self) -> tuple[dt.date, dt.date]:
        return self.start - dt.timedelta(days=self.days), self.start - dt.timedelta(days=1)


def _midnight(d: dt.date) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(), dt.UTC)


@dataclass
class Dashboard:
    overview: dict[str, Any]
    quality_trends: list[dict[str, Any]]
    model_performance: list[dict[str, Any]]
    optimal_ranges: dict[str, tuple[float, float]]
    correlations: list[dict[str, Any]]
    recent_activity: list[dict[str, Any]]


def optimal_ranges(combos: list[Combo], value: str = "quality", larger: bool = True) -> dict[str, tuple[float, float]]:
    """Per parameter, [min, max] of the tested values among the buckets whose mean (of `value`) reaches the top
    quartile of the buckets' means (the bottom one when smaller is better), weighted by their scored responses.
    Parameters tested at one value only are left out (no range was explored)."""
    if not combos:
        return {}
    sign = 1.0 if larger else -1.0
    means = [sign * getattr(c, value) for c in combos]
    cut = stats.weighted_quantile(means, [c.scored for c in combos], TOP_QUARTILE)
    top = [c for c, m in zip(combos, means, strict=True) if m >= cut]
    out = {}
    for p in PARAMETERS:
        if len({c.parameters[p] for c in combos}) < 2:
            continue
        vals = [c.parameters[p] for c in top]
        out[p] = (float(min(vals)), float(max(vals)))
    return out


def parameter_correlations(pairs: dict[tuple[str, str], Sums]) -> list[tuple[str, str, Correlation]]:
    """Every parameter x quality metric pair with a defined r, strongest first."""
    out = []
    for p in PARAMETERS:
        for m in METRICS:
            s = pairs.get((p, m))
            c = stats.pearson(s) if s is not None else None
            if c is not None:
                out.append((p, m, c))
    out.sort(key=lambda t: (-abs(t[2].r), t[0], t[1]))
    return out


def metric_correlations(pairs: dict[tuple[str, str], Sums]) -> list[tuple[str, str, Correlation]]:
    out = []
    for i, a in enumerate(METRICS):
        for b in METRICS[i + 1:]:
            s = pairs.get((a, b))
            c = stats.pearson(s) if s is not None else None
            if c is not None:
                out.append((a, b, c))
    out.sort(key=lambda t: (-abs(t[2].r), t[0], t[1]))
    return out


async def dashboard(repo: AnalyticsRepository, period: Period, models: list[str], types: list[str],
                    now: dt.datetime) -> Dashboard:
    for t in types:
        if t not in EXPERIMENT_TYPES:
            raise validation_error("experiment_types", t, f"each must be one of {', '.join(EXPERIMENT_TYPES)}")
    scope = Scope(period.start, period.today, models or None, types or None)
    prev_start, prev_end = period.previous
    until = now + dt.timedelta(seconds=1)
    # Independent reads of the rollups, run concurrently on the pool (the dashboard's latency is the slowest one).
    (cur, prev, total_experiments, experiments_today, daily, per_model, pairs, activity_rows,
     combos) = await asyncio.gather(
        repo.totals(scope), repo.totals(Scope(prev_start, prev_end, scope.models, scope.types)),
        repo.experiments_created(_midnight(period.start), until, scope),
        repo.experiments_created(_midnight(period.today), until, scope),
        repo.daily_quality(scope), repo.model_performance(scope), repo.pairs(scope), repo.recent_activity(scope),
        repo.combos(scope))
    generations = cur.responses + cur.failures
    overview = {
        "total_experiments": total_experiments,
        "total_responses": cur.responses,
        "average_quality": round(cur.average_quality, 1),
        "quality_trend": stats.trend(cur.average_quality, prev.average_quality),
        "active_models": cur.models,
        "total_cost": round(cur.cost, 6),
        "cost_trend": stats.trend(cur.cost, prev.cost),
        "success_rate": round(cur.responses / generations * 100, 1) if generations else 0.0,
        "experiments_today": experiments_today,
    }
    days: dict[dt.date, dict[str, Any]] = {}
    for r in daily:
        day = days.setdefault(r["day"], {"scored": 0, "sum": 0.0, "experiments": r["experiments"], "best": None})
        day["scored"] += r["scored"]
        day["sum"] += r["quality_sum"]
        mean = r["quality_sum"] / r["scored"]
        if day["best"] is None or mean > day["best"][0]:
            day["best"] = (mean, r["model"])
    quality_trends = [{"date": d.isoformat(), "average_quality": round(v["sum"] / v["scored"], 1),
                       "experiment_count": v["experiments"], "top_model": v["best"][1]}
                      for d, v in sorted(days.items())]
    performance = [{"model": r["model"],
                    "average_quality": round(r["quality_sum"] / r["scored"], 1) if r["scored"] else 0.0,
                    "experiment_count": r["experiments"], "total_cost": round(r["cost"], 6),
                    "avg_response_time": round(r["time_ms"] / r["responses"] / 1000, 3)}
                   for r in per_model]
    performance.sort(key=lambda m: (-m["average_quality"], m["model"]))
    correlations = [{"parameter": p, "metric": m, "correlation": round(c.r, 3), "strength": stats.strength(c.r)}
                    for p, m, c in parameter_correlations(pairs)]
    activity = [{"type": r["type"], "experiment_id": r["experiment_id"], "name": r["name"], "quality": r["quality"],
                 "timestamp": r["at"]} for r in activity_rows]
    return Dashboard(overview, quality_trends, performance,
                     optimal_ranges(combos), correlations, activity)


@dataclass
class CorrelationReport:
    parameter_quality: list[dict[str, Any]] = field(default_factory=list)
    cross_metrics: list[dict[str, Any]] = field(default_factory=list)
    insights: list[str] = field(default_factory=list)


def _fmt_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def insights(params: list[tuple[str, str, Correlation]], metrics: list[tuple[str, str, Correlation]],
             scored: int) -> list[str]:
    """Sentences about the significant correlations, each naming its statistic; or why there are none."""
    if scored < stats.MIN_PAIRS:
        return [f"Too little data for correlations: {scored} scored response(s); at least {stats.MIN_PAIRS} "
                "are needed."]
    out = []
    for p, m, c in params:
        if c.p_value < 0.05 and stats.strength(c.r) != "negligible":
            direction = "higher" if c.r > 0 else "lower"
            out.append(f"Higher {_label(p)} goes with {direction} {_label(m)} scores ({stats.strength(c.r)}, "
                       f"Pearson r = {c.r:.2f}, {_fmt_p(c.p_value)}, n = {c.n})")
    for a, b, c in metrics:
        if c.p_value < 0.05 and stats.strength(c.r) != "negligible":
            out.append(f"{_label(a).capitalize()} and {_label(b)} show a {stats.interpretation(c.r).replace('_', ' ')} "
                       f"correlation (Pearson r = {c.r:.2f}, {_fmt_p(c.p_value)}, n = {c.n})")
    if not out:
        out.append(f"No correlation is significant at p < 0.05 over {scored} scored responses.")
    return out


async def correlations(repo: AnalyticsRepository) -> CorrelationReport:
    pairs = await repo.pair_totals(None)
    params, metrics = parameter_correlations(pairs), metric_correlations(pairs)
    scored = int(max((s.n for (x, y), s in pairs.items() if y == "overall_quality"), default=0))
    return CorrelationReport(
        parameter_quality=[{"parameter": p, "quality_metric": m, "correlation": round(c.r, 4),
                            "p_value": float(f"{c.p_value:.4g}"), "significance": stats.significance(c.p_value)}
                           for p, m, c in params],
        cross_metrics=[{"metric_a": a, "metric_b": b, "correlation": round(c.r, 4),
                        "interpretation": stats.interpretation(c.r)} for a, b, c in metrics],
        insights=insights(params, metrics, scored),
    )
