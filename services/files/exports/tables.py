"""How an export lays out experiments: the tables every format shares, per-dimension statistics, and the
reproducibility record written into every export and report."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmlab.runtime import VERSION
from llmlab.runtime.envelope import iso, utcnow

# The six quality dimensions, in the order of llmlab.metrics.v1.QualityScores (docs/metrics.md); other numeric
# metrics follow in name order.
DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
OVERALL_KEYS = ("overall_quality", "overall", "quality_score")
PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty", "seed")


@dataclass
class Export:
    """What is rendered: the experiments as read, the options, and the record."""

    kind: str  # "experiment", "batch" or "report"
    title: str
    experiments: list[dict[str, Any]]
    include_responses: bool = True
    include_metrics: bool = True
    include_analysis: bool = False
    record: dict[str, Any] = field(default_factory=dict)
    subtitle: str = ""
    # Called by the renderers every TICK_ROWS responses with the fraction done: a job reports progress through it
    # and stops there when cancelled (it raises). Not part of what is rendered.
    tick: Callable[[float], None] | None = field(default=None, repr=False, compare=False)

    def response_count(self) -> int:
        return sum(len(e.get("responses", [])) for e in self.experiments)

    def ticker(self, start: float = 0.0, share: float = 1.0) -> Callable[[int], None]:
        """A per-response callback for one of a renderer's loops, which does `share` of its work after `start`:
        calls `tick` every TICK_ROWS responses."""
        total = max(self.response_count(), 1)
        tick = self.tick

        def step(i: int) -> None:
            if tick is not None and i % TICK_ROWS == 0:
                tick(start + share * min(i / total, 1.0))

        return step


TICK_ROWS = 500


def _metrics(response: dict[str, Any]) -> dict[str, float]:
    m = response.get("quality_metrics")
    if not isinstance(m, dict):
        return {}
    return {k: float(v) for k, v in m.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def overall(response: dict[str, Any]) -> float | None:
    """A response's overall quality: the scorer's own figure, else the mean of its dimensions."""
    m = _metrics(response)
    for k in OVERALL_KEYS:
        if k in m:
            return m[k]
    dims = [m[d] for d in DIMENSIONS if d in m]
    return statistics.fmean(dims) if dims else None


def metric_keys(exps: list[dict[str, Any]]) -> list[str]:
    seen: set[str] = set()
    for e in exps:
        for r in e.get("responses", []):
            seen.update(_metrics(r))
    return [d for d in DIMENSIONS if d in seen] + sorted(seen - set(DIMENSIONS))


def experiment_table(exps: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    headers = ["id", "name", "type", "status", "model", *PARAMETERS, "quality_score", "response_count",
               "responses", "total_cost", "duration", "created_at", "updated_at", "tags"]
    rows = []
    for e in exps:
        p = e.get("parameters") or {}
        rows.append([e.get("id"), e.get("name"), e.get("type"), e.get("status"), e.get("model"),
                     *(p.get(k) for k in PARAMETERS), e.get("quality_score"), e.get("response_count"),
                     len(e.get("responses", [])), e.get("total_cost"), e.get("duration"), e.get("created_at"),
                     e.get("updated_at"), ",".join(e.get("tags", []))])
    return headers, rows


def response_table(x: Export) -> tuple[list[str], list[list[Any]]]:
    """One row per response: the experiment's id and parameters, the response's figures and (optionally) text
    and metrics."""
    keys = metric_keys(x.experiments) if x.include_metrics else []
    headers = ["experiment_id", "experiment_name", "model", "temperature", "top_p", "response_id"]
    if x.include_responses:
        headers.append("content")
    headers += ["response_time_ms", "token_count", "cost"]
    if x.include_metrics:
        headers += ["overall_quality", *keys]
    rows = []
    step = x.ticker(0.0, 0.5)  # the table; writing it out is the other half (csv, xlsx)
    for e in x.experiments:
        p = e.get("parameters") or {}
        for r in e.get("responses", []):
            step(len(rows))
            row = [e.get("id"), e.get("name"), e.get("model"), p.get("temperature"), p.get("top_p"), r.get("id")]
            if x.include_responses:
                row.append(r.get("content", ""))
            row += [r.get("response_time"), r.get("token_count"), r.get("cost")]
            if x.include_metrics:
                m = _metrics(r)
                row += [overall(r), *(m.get(k) for k in keys)]
            rows.append(row)
    return headers, rows


def dimension_means(exps: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each quality dimension over every scored response (the overall figure is not a dimension)."""
    values: dict[str, list[float]] = {}
    for e in exps:
        for r in e.get("responses", []):
            for k, v in _metrics(r).items():
                values.setdefault(k, []).append(v)
    return {k: statistics.fmean(values[k]) for k in metric_keys(exps) if values.get(k) and k not in OVERALL_KEYS}


def analysis_table(exps: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Per experiment: how many responses, their quality (mean, sd, min, max), mean latency, cost."""
    headers = ["experiment_id", "name", "responses", "quality_mean", "quality_sd", "quality_min", "quality_max",
               "mean_response_time_ms", "mean_tokens", "total_cost"]
    rows = []
    for e in exps:
        rs = e.get("responses", [])
        q = [v for v in (overall(r) for r in rs) if v is not None]
        lat = [r.get("response_time") or 0 for r in rs]
        tok = [r.get("token_count") or 0 for r in rs]
        rows.append([
            e.get("id"), e.get("name"), len(rs),
            round(statistics.fmean(q), 2) if q else None,
            round(statistics.stdev(q), 2) if len(q) > 1 else None,
            round(min(q), 2) if q else None, round(max(q), 2) if q else None,
            round(statistics.fmean(lat), 1) if lat else None, round(statistics.fmean(tok), 1) if tok else None,
            round(sum(r.get("cost") or 0 for r in rs), 6),
        ])
    return headers, rows


def reproducibility(exps: list[dict[str, Any]], models: dict[str, Any], engine: dict[str, Any],
                    options: dict[str, Any], dataset_version: str | None = None) -> dict[str, Any]:
    """Everything needed to repeat or audit what the file shows (docs/files.md "Reproducibility record")."""
    scorers = sorted({str(r["quality_metrics"].get("scorer_version")) for e in exps for r in e.get("responses", [])
                      if isinstance(r.get("quality_metrics"), dict) and r["quality_metrics"].get("scorer_version")})
    times = sorted(t for e in exps for t in (e.get("created_at"), e.get("updated_at")) if t)
    return {
        "platform": "llmlab",
        "platform_version": VERSION,
        "generated_at": iso(utcnow()),
        "models": [models.get(m, {"id": m, "version": None, "backend": None, "artifact_sha256": None})
                   for m in sorted({e.get("model") for e in exps if e.get("model")})],
        "engine": engine or None,
        "experiments": [{"id": e.get("id"), "model": e.get("model"), "parameters": e.get("parameters") or {},
                         "seed": (e.get("parameters") or {}).get("seed"),
                         "parameter_ranges": e.get("parameter_ranges")} for e in exps],
        "scorer_version": scorers[0] if len(scorers) == 1 else (scorers or None),
        "dataset_version": dataset_version,
        "time_range": {"from": times[0], "to": times[-1]} if times else None,
        "options": options,
    }


def record_rows(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """The record flattened to (dotted key, scalar) pairs, for sheets and PDF pages."""
    out: list[tuple[str, Any]] = []
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += record_rows(v, key + ".") if v else [(key, "{}")]
        elif isinstance(v, list):
            if not v:
                out.append((key, "[]"))
            for i, item in enumerate(v):
                out += record_rows(item, f"{key}[{i}].") if isinstance(item, dict) else [(f"{key}[{i}]", item)]
        else:
            out.append((key, v))
    return out
