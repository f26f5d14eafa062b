"""Analyses of stored responses (experiment stats, compare, comparison/analyze): spreads, parameter impact with
scipy, and advice sentences generated from the numbers they rest on (no I/O here)."""

from __future__ import annotations

import itertools
import math
import statistics as pystats
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from scipy import stats

from .response_repository import ResponseRecord

DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")
MIN_CORRELATION_SAMPLES = 3  # a correlation of two points is always +-1: it says nothing
ALPHA = 0.05
CREATIVITY_EFFECT_POINTS = 2.0  # a mean creativity difference below this reads as "none"


def _r1(x: float) -> float:
    return round(x, 1)


def _label(name: str) -> str:
    return name.replace("_", " ")


def _scored(records: Sequence[ResponseRecord]) -> list[ResponseRecord]:
    return [r for r in records if r.quality_metrics is not None and r.overall_quality is not None]


@dataclass
class Impact:
    """How one sampling parameter relates to overall quality across responses (Pearson, scipy.stats.pearsonr)."""

    parameter: str
    r: float
    p_value: float
    n: int

    @property
    def impact_score(self) -> str:
        a = abs(self.r)
        return "high" if a >= 0.5 else "medium" if a >= 0.3 else "low"


def parameter_impacts(records: Sequence[ResponseRecord]) -> list[Impact]:
    """Impacts of the parameters that vary across at least MIN_CORRELATION_SAMPLES scored responses."""
    scored = _scored(records)
    out: list[Impact] = []
    if len(scored) < MIN_CORRELATION_SAMPLES:
        return out
    quality = [r.overall_quality for r in scored]
    if len(set(quality)) < 2:
        return out
    for p in PARAMETERS:
        values = [r.parameters.get(p) for r in scored]
        if any(v is None for v in values) or len(set(values)) < 2:
            continue
        res = stats.pearsonr(values, quality)
        if math.isfinite(res.statistic):
            out.append(Impact(p, round(float(res.statistic), 3), round(float(res.pvalue), 4), len(scored)))
    return out


@dataclass
class Differences:
    max_difference: float
    average_difference: float
    most_varied_metric: str


def differences(records: Sequence[ResponseRecord]) -> Differences:
    scored = _scored(records)
    q = [r.overall_quality for r in scored]
    if len(q) < 2:
        return Differences(0.0, 0.0, "")
    pairs = list(itertools.combinations(q, 2))
    spread = {d: max(r.quality_metrics[d] for r in scored) - min(r.quality_metrics[d] for r in scored)  # type: ignore[index]
              for d in DIMENSIONS}
    return Differences(
        _r1(max(q) - min(q)),
        _r1(sum(abs(a - b) for a, b in pairs) / len(pairs)),
        max(DIMENSIONS, key=lambda d: (spread[d], d)),
    )


def _fmt_param(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def recommendations(records: Sequence[ResponseRecord], impacts: Sequence[Impact]) -> list[str]:
    """Advice sentences, each naming the numbers it rests on."""
    scored = _scored(records)
    if not scored:
        return [f"None of the {len(records)} responses is scored yet, so there is nothing to recommend."]
    out: list[str] = []
    best = max(scored, key=lambda r: (r.overall_quality, -r.id))
    mean = sum(r.overall_quality for r in scored) / len(scored)  # type: ignore[misc]
    top_dim = max(DIMENSIONS, key=lambda d: (best.quality_metrics[d], d))  # type: ignore[index]
    out.append(
        f"Response {best.id} scores highest overall ({best.overall_quality:.1f}, "
        f"{best.overall_quality - mean:.1f} points above the mean of {mean:.1f} over {len(scored)} responses); "
        f"its strongest dimension is {_label(top_dim)} ({best.quality_metrics[top_dim]:.1f})."  # type: ignore[index]
    )
    varied = [p for p in PARAMETERS if len({r.parameters.get(p) for r in scored}) > 1]
    if not varied:
        out.append(f"All {len(scored)} responses share their sampling parameters, so their scores cannot show which "
                   "parameter to change; generate with generate_all over parameter_ranges to compare settings.")
    elif len(scored) < MIN_CORRELATION_SAMPLES:
        out.append(f"{len(scored)} responses are too few to relate {', '.join(varied)} to quality "
                   f"({MIN_CORRELATION_SAMPLES} or more are needed).")
    elif impacts:
        top = max(impacts, key=lambda i: (abs(i.r), i.parameter))
        direction = "rises" if top.r > 0 else "falls"
        if abs(top.r) >= 0.3 and top.p_value < ALPHA:
            out.append(
                f"Quality {direction} with {top.parameter} here (r = {top.r:.2f}, p = {top.p_value:.3f}, "
                f"n = {top.n}): consider {top.parameter} around {_fmt_param(best.parameters[top.parameter])}, the "
                f"value of the best response, for similar tasks."
            )
        elif abs(top.r) >= 0.3:
            out.append(
                f"Quality tends to {'rise' if top.r > 0 else 'fall'} with {top.parameter} (r = {top.r:.2f}), but "
                f"the correlation is not significant (p = {top.p_value:.3f}, n = {top.n}): generate more responses "
                f"per setting before settling on a {top.parameter}."
            )
        else:
            out.append(f"No sampling parameter relates clearly to quality here: the largest correlation is "
                       f"{top.parameter}'s (r = {top.r:.2f}, n = {top.n}).")
    means = {d: sum(r.quality_metrics[d] for r in scored) / len(scored) for d in DIMENSIONS}  # type: ignore[index]
    weakest = min(DIMENSIONS, key=lambda d: (means[d], d))
    out.append(f"The weakest dimension across these responses is {_label(weakest)} (mean {means[weakest]:.1f} of "
               f"100); GET /api/metrics/{{response_id}} shows the factors behind it.")
    return out


@dataclass
class Summary:
    average: float
    best: float
    worst: float


def summary(values: Sequence[float]) -> Summary:
    return Summary(_r1(sum(values) / len(values)), _r1(max(values)), _r1(min(values))) if values else Summary(0, 0, 0)


def distribution(records: Sequence[ResponseRecord]) -> dict[str, Summary]:
    scored = _scored(records)
    out = {"overall_quality": summary([r.overall_quality for r in scored])}  # type: ignore[misc]
    for d in DIMENSIONS:
        out[d] = summary([r.quality_metrics[d] for r in scored])  # type: ignore[index]
    return out


@dataclass
class TemperatureEffect:
    high: list[int]
    low: list[int]
    impact_on_creativity: str
    difference: float
    p_value: float | None


def temperature_effect(records: Sequence[ResponseRecord]) -> TemperatureEffect | None:
    """Responses above vs below the median temperature, and how their creativity differs (Mann-Whitney U when
    both groups have 2+ responses). None when every response has the same temperature."""
    scored = [r for r in _scored(records) if r.parameters.get("temperature") is not None]
    temps = [r.parameters["temperature"] for r in scored]
    if len(set(temps)) < 2:
        return None
    median = pystats.median(temps)
    high = [r for r in scored if r.parameters["temperature"] > median]
    low = [r for r in scored if r.parameters["temperature"] < median]
    hc = [r.quality_metrics["creativity"] for r in high]  # type: ignore[index]
    lc = [r.quality_metrics["creativity"] for r in low]  # type: ignore[index]
    diff = sum(hc) / len(hc) - sum(lc) / len(lc)
    p = None
    if len(hc) >= 2 and len(lc) >= 2 and len(set(hc + lc)) > 1:
        p = round(float(stats.mannwhitneyu(hc, lc, alternative="two-sided").pvalue), 4)
    if abs(diff) < CREATIVITY_EFFECT_POINTS:
        label = "none"
    else:
        sign = "positive" if diff > 0 else "negative"
        label = f"significant_{sign}" if p is not None and p < ALPHA else sign
    return TemperatureEffect([r.id for r in high], [r.id for r in low], label, _r1(diff), p)


def temperature_sentence(effect: TemperatureEffect) -> str:
    test = (f"Mann-Whitney p = {effect.p_value:.3f}" if effect.p_value is not None
            else "too few responses per group for a test")
    return (f"Responses above the median temperature ({len(effect.high)}) score {effect.difference:+.1f} points of "
            f"creativity against those below it ({len(effect.low)}); {test}.")


@dataclass
class ParameterGroup:
    parameters: dict[str, Any]
    average_quality: float
    response_count: int


def parameter_performance(records: Sequence[ResponseRecord]) -> list[ParameterGroup]:
    """Mean quality per combination of temperature, top_p and any other parameter that varies; best first."""
    keys = ["temperature", "top_p"] + [p for p in PARAMETERS[2:] if len({r.parameters.get(p) for r in records}) > 1]
    groups: dict[tuple[Any, ...], list[ResponseRecord]] = {}
    for r in records:
        groups.setdefault(tuple(r.parameters.get(k) for k in keys), []).append(r)
    out = []
    for combo, members in groups.items():
        scored = _scored(members)
        avg = sum(m.overall_quality for m in scored) / len(scored) if scored else 0.0  # type: ignore[misc]
        out.append(ParameterGroup({k: v for k, v in zip(keys, combo, strict=True) if v is not None}, _r1(avg),
                                  len(members)))
    return sorted(out, key=lambda g: (-g.average_quality, -g.response_count))


@dataclass
class Overview:
    total_responses: int
    quality: Summary
    total_cost: float
    total_duration_ms: int
    success_rate: float
    breakdown: dict[str, Summary] = field(default_factory=dict)


def overview(records: Sequence[ResponseRecord], failed: int) -> Overview:
    scored = _scored(records)
    attempted = len(records) + failed
    return Overview(
        total_responses=len(records),
        quality=summary([r.overall_quality for r in scored]),  # type: ignore[misc]
        total_cost=round(sum(r.cost for r in records), 10),
        total_duration_ms=sum(r.response_time_ms for r in records),
        success_rate=_r1(len(records) / attempted * 100) if attempted else 0.0,
        breakdown={d: summary([r.quality_metrics[d] for r in scored]) for d in DIMENSIONS},  # type: ignore[index]
    )
