"""The read model's projection: how each event changes the facts and the rollups (pure; the repository applies it).

The event catalogue is in docs/analytics.md. Rollups are sums, so every change is a delta; a response adds its
quality to the rollups only once both of its halves (response.created, response.scored) are known, and a re-score
replaces what it added (the old contribution is subtracted), so the rollups always equal a recomputation from the
facts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")
DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
METRICS = ("overall_quality", *DIMENSIONS)
# Pearson pairs kept as sufficient statistics: every parameter with every metric, and every metric pair once.
# cost and response_time_ms (per response) are paired with the parameters too: the cost and speed objectives'
# sensitivities (docs/analytics.md).
OUTCOMES = ("cost", "response_time_ms")
PARAMETER_PAIRS = tuple((p, m) for p in PARAMETERS for m in (*METRICS, *OUTCOMES))
METRIC_PAIRS = tuple((a, b) for i, a in enumerate(METRICS) for b in METRICS[i + 1:])
PAIRS = PARAMETER_PAIRS + METRIC_PAIRS
BUCKET_STEP = 0.05  # float parameters are bucketed to the nearest 0.05; max_tokens is kept exact

# Lifecycle events of experiments and batches shown as recent activity (type -> activity type).
ACTIVITY = {
    "experiment.created": "experiment_created",
    "experiment.completed": "experiment_completed",
    "experiment.failed": "experiment_failed",
    "batch_experiment.completed": "batch_completed",
    "batch_experiment.failed": "batch_failed",
}
# Job events counted by /api/statistics: event type prefix -> job kind. The status is the type's last word.
JOB_PREFIXES = {"fine_tuning.job.": "training", "training.job.": "training", "evaluation.": "evaluation"}

# Latency sketch: bin i holds values in (GAMMA^(i-1), GAMMA^i] ms, so a bin's midpoint is within 1% of any value
# in it (relative accuracy ALPHA, as DDSketch); bins of different hours and models merge by adding counts.
SKETCH_ALPHA = 0.01
GAMMA = (1 + SKETCH_ALPHA) / (1 - SKETCH_ALPHA)
_LOG_GAMMA = math.log(GAMMA)


def latency_bin(ms: float) -> int:
    """The sketch bin of a latency; everything at or below 1 ms shares bin 0."""
    return 0 if ms <= 1.0 else math.ceil(math.log(ms) / _LOG_GAMMA)


def bin_value(b: int) -> float:
    """The representative latency of a bin: the point with equal relative error to both of its edges."""
    return 1.0 if b <= 0 else 2 * GAMMA ** b / (GAMMA + 1)


def bucket(value: float) -> float:
    return round(round(value / BUCKET_STEP) * BUCKET_STEP, 2)


def combo(parameters: dict[str, Any] | None) -> tuple[float, float, int, float, float] | None:
    """The parameter bucket of a response; None when it lacks temperature, top_p or max_tokens."""
    p = parameters or {}
    try:
        return (bucket(float(p["temperature"])), bucket(float(p["top_p"])), int(p["max_tokens"]),
                bucket(float(p.get("frequency_penalty") or 0.0)), bucket(float(p.get("presence_penalty") or 0.0)))
    except (KeyError, TypeError, ValueError):
        return None


def parse_principal(principal: str) -> tuple[str, str]:
    """(user id, key id) of a `user:<id>[/key:<id>]` principal; ("", "") for internal callers."""
    user, _, key = (principal or "").partition("/")
    return (user[5:] if user.startswith("user:") else "", key[4:] if key.startswith("key:") else "")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


@dataclass
class Fact:
    """One lab response as the read model knows it."""

    response_id: int
    experiment_id: int | None = None
    experiment_type: str = "single"
    model: str = ""
    principal: str = ""
    parameters: dict[str, Any] | None = None
    cost: float | None = None
    response_time_ms: float | None = None
    created_at: dt.datetime | None = None
    metrics: dict[str, float] | None = None
    counted: dict[str, float] | None = None
    dirty: bool = False


@dataclass
class Deltas:
    """Everything a batch of events adds to the rollups, summed per key before it is written."""

    daily_model: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 6))
    daily_experiments: set[tuple] = field(default_factory=set)
    daily_combos: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 8))
    combo_experiments: set[tuple] = field(default_factory=set)
    daily_pairs: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 6))
    usage_hourly: dict[tuple, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0] * 5))
    usage_latency: dict[tuple, int] = field(default_factory=lambda: defaultdict(int))
    failure_minutes: dict[dt.datetime, int] = field(default_factory=lambda: defaultdict(int))
    experiments: dict[int, dict[str, Any]] = field(default_factory=dict)
    activity: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[tuple[str, str], tuple[str, dt.datetime]] = field(default_factory=dict)


# daily_model columns: responses, failures, cost, time_ms, scored, quality_sum
# daily_combos columns: responses, cost, time_ms, scored, quality_sum, quality_sq, creativity_sum (7 used)
# usage_hourly columns: requests, prompt_tokens, completion_tokens, cost, latency_ms


def _quality(fact: Fact, metrics: dict[str, float], sign: float, d: Deltas) -> None:
    """Add (sign=1) or take back (sign=-1) a response's scored contribution."""
    assert fact.created_at is not None
    day = fact.created_at.date()
    q = metrics.get("overall_quality")
    if q is not None:
        row = d.daily_model[(day, fact.model, fact.experiment_type)]
        row[4] += sign
        row[5] += sign * q
        c = combo(fact.parameters)
        if c is not None:
            crow = d.daily_combos[(day, fact.model, fact.experiment_type, *c)]
            crow[3] += sign
            crow[4] += sign * q
            crow[5] += sign * q * q
            crow[6] += sign * metrics.get("creativity", 0.0)
    params = fact.parameters or {}
    xs: dict[str, float | None] = {p: _number(params.get(p)) for p in PARAMETERS}
    xs.update(metrics)
    ys = {**metrics, "cost": fact.cost, "response_time_ms": fact.response_time_ms}
    pairs, model, etype = d.daily_pairs, fact.model, fact.experiment_type
    for x, y in PAIRS:
        xv, yv = xs.get(x), ys.get(y)
        if xv is None or yv is None:
            continue
        s = pairs[(day, model, etype, x, y)]
        s[0] += sign
        s[1] += sign * xv
        s[2] += sign * yv
        s[3] += sign * xv * xv
        s[4] += sign * yv * yv
        s[5] += sign * xv * yv


def _settle(fact: Fact, d: Deltas) -> None:
    """Make the rollups hold exactly this fact's current metrics (when both halves are known)."""
    if fact.created_at is None or fact.metrics is None or fact.counted == fact.metrics:
        return
    if fact.counted is not None:
        _quality(fact, fact.counted, -1.0, d)
    _quality(fact, fact.metrics, 1.0, d)
    fact.counted = dict(fact.metrics)
    fact.dirty = True


def _metrics(raw: Any) -> dict[str, float]:
    out = {}
    for m in METRICS:
        v = _number((raw or {}).get(m))
        if v is not None:
            out[m] = v
    return out


def at(published_at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(published_at or 0.0, dt.UTC)


def response_created(fact: Fact, data: dict[str, Any], when: dt.datetime, d: Deltas) -> None:
    if fact.created_at is not None:
        return  # the same response announced twice (a replayed producer): its first announcement stands
    fact.experiment_id = data.get("experiment_id")
    fact.experiment_type = str(data.get("experiment_type") or fact.experiment_type or "single")
    fact.model = str(data.get("model") or fact.model)
    fact.principal = str(data.get("principal") or "")
    fact.parameters = dict(data.get("parameters") or {})
    fact.cost = _number(data.get("cost")) or 0.0
    fact.response_time_ms = _number(data.get("response_time")) or 0.0
    fact.created_at = when
    fact.dirty = True
    day = when.date()
    row = d.daily_model[(day, fact.model, fact.experiment_type)]
    row[0] += 1
    row[2] += fact.cost
    row[3] += fact.response_time_ms
    if fact.experiment_id is not None:
        d.daily_experiments.add((day, fact.model, fact.experiment_type, int(fact.experiment_id)))
    c = combo(fact.parameters)
    if c is not None:
        crow = d.daily_combos[(day, fact.model, fact.experiment_type, *c)]
        crow[0] += 1
        crow[1] += fact.cost
        crow[2] += fact.response_time_ms
        if fact.experiment_id is not None:
            d.combo_experiments.add((fact.model, *c, int(fact.experiment_id)))
    _settle(fact, d)


def response_scored(fact: Fact, data: dict[str, Any], d: Deltas) -> None:
    metrics = _metrics(data.get("metrics"))
    if not metrics:
        return
    if fact.created_at is None:  # scored before created was read: keep what the event says until it arrives
        fact.model = str(data.get("model") or fact.model)
        fact.experiment_type = str(data.get("experiment_type") or fact.experiment_type)
        fact.experiment_id = data.get("experiment_id", fact.experiment_id)
    fact.metrics = metrics
    fact.dirty = True
    _settle(fact, d)


def response_failed(data: dict[str, Any], when: dt.datetime, d: Deltas) -> None:
    model, etype = str(data.get("model") or ""), str(data.get("experiment_type") or "single")
    d.daily_model[(when.date(), model, etype)][1] += 1
    if int(data.get("status_code") or 500) >= 500:
        d.failure_minutes[when.replace(second=0, microsecond=0)] += 1


def usage_recorded(data: dict[str, Any], when: dt.datetime, d: Deltas) -> None:
    user, key = parse_principal(str(data.get("principal") or ""))
    model = str(data.get("model") or "")
    hour = when.replace(minute=0, second=0, microsecond=0)
    latency = _number(data.get("latency_ms")) or 0.0
    row = d.usage_hourly[(hour, user, key, model)]
    row[0] += 1
    row[1] += int(data.get("prompt_tokens") or 0)
    row[2] += int(data.get("completion_tokens") or 0)
    row[3] += _number(data.get("cost")) or 0.0
    row[4] += latency
    d.usage_latency[(hour, user, model, latency_bin(latency))] += 1


def experiment_event(event_type: str, data: dict[str, Any], when: dt.datetime, event: tuple[str, str],
                     d: Deltas) -> None:
    eid = data.get("experiment_id")
    if eid is None:
        return
    eid = int(eid)
    if event_type.startswith("experiment."):  # batch experiments have ids of their own: activity only
        row = d.experiments.setdefault(eid, {"experiment_id": eid})
        for k in ("name", "type", "model", "principal"):
            if data.get(k) is not None:
                row[k] = str(data[k])
        if event_type == "experiment.created":
            row["created_at"] = when
            row.setdefault("status", "draft")
        else:
            row["status"] = event_type.rsplit(".", 1)[1]
        row["updated_at"] = when
    activity = ACTIVITY.get(event_type)
    if activity is not None:
        d.activity.append({"stream": event[0], "event_id": event[1], "type": activity, "experiment_id": eid,
                           "name": str(data.get("name") or ""), "model": str(data.get("model") or ""),
                           "experiment_type": str(data.get("type") or "single"),
                           "quality": _number(data.get("average_quality")), "at": when})


def job_event(event_type: str, data: dict[str, Any], when: dt.datetime, d: Deltas) -> bool:
    for prefix, kind in JOB_PREFIXES.items():
        if event_type.startswith(prefix):
            job_id = data.get("id") or data.get("job_id")
            if job_id is None:
                return True
            status = str(data.get("status") or event_type[len(prefix):])
            d.jobs[(kind, str(job_id))] = (status, when)
            return True
    return False
