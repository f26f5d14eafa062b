"""Metrics rules: what a scoring input, a comparison and a trends query may be (no I/O here)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmlab.runtime import NotFound, validation_error

from .judge import Verdict
from .scoring import DIMENSIONS, Score
from .statistical import METRICS, PERIODS

MAX_CONTENT_CHARS = 200_000
MAX_PROMPT_CHARS = 200_000
MAX_BATCH = 100  # POST /api/metrics/batch
MAX_SCORE_MANY = 1000  # ScoringService.ScoreResponses
MAX_COMPARE = 50
MAX_REFERENCE_SAMPLES = 10_000
EXPERIMENT_TYPES = ("single", "batch")


@dataclass
class ScoringInput:
    """One validated text to score, with the lab response it belongs to when it is to be stored."""

    content: str
    prompt: str
    max_tokens: int | None = None
    finish_reason: str = ""
    token_logprobs: list[float] = field(default_factory=list)
    subject: dict[str, Any] | None = None


def check_input(field_prefix: str, content: str, prompt: str, max_tokens: int | None) -> None:
    if not content.strip():
        raise validation_error(f"{field_prefix}content", content, "is required: the text to score")
    if len(content) > MAX_CONTENT_CHARS:
        raise validation_error(f"{field_prefix}content", len(content),
                               f"must be at most {MAX_CONTENT_CHARS} characters")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise validation_error(f"{field_prefix}prompt", len(prompt), f"must be at most {MAX_PROMPT_CHARS} characters")
    if max_tokens is not None and max_tokens < 1:
        raise validation_error(f"{field_prefix}max_tokens", max_tokens, "must be at least 1")


def check_subject(field_prefix: str, subject: dict[str, Any]) -> dict[str, Any]:
    """A subject names a lab response (> 0), its experiment, type, model and creation time (RFC 3339)."""
    if subject["response_id"] < 1:
        raise validation_error(f"{field_prefix}subject.response_id", subject["response_id"], "must be at least 1")
    if subject["experiment_type"] and subject["experiment_type"] not in EXPERIMENT_TYPES:
        raise validation_error(f"{field_prefix}subject.experiment_type", subject["experiment_type"],
                               f"must be one of {', '.join(EXPERIMENT_TYPES)}")
    try:
        created = dt.datetime.fromisoformat(subject["created_at"].replace("Z", "+00:00")) if subject[
            "created_at"] else dt.datetime.now(dt.UTC)
    except ValueError:
        raise validation_error(f"{field_prefix}subject.created_at", subject["created_at"],
                               "must be an RFC 3339 date-time") from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.UTC)
    return {**subject, "experiment_type": subject["experiment_type"] or "single", "created_at": created}


def check_count(field_name: str, n: int, lo: int, hi: int) -> None:
    if not lo <= n <= hi:
        raise validation_error(field_name, n, f"must hold between {lo} and {hi} items")


def compare_ids(ids: Sequence[int]) -> list[int]:
    """2..50 distinct positive ids, in request order."""
    unique = list(dict.fromkeys(ids))
    if len(unique) != len(ids):
        raise validation_error("response_ids", list(ids), "must not repeat an id")
    check_count("response_ids", len(unique), 2, MAX_COMPARE)
    for i, v in enumerate(unique):
        if v < 1:
            raise validation_error(f"response_ids[{i}]", v, "must be a positive response id")
    return unique


def not_scored(ids: Sequence[int]) -> NotFound:
    shown = ", ".join(str(i) for i in ids[:10])
    return NotFound(f"No scores for response(s) {shown}: unknown responses, or not scored yet",
                    reason="RESPONSE_NOT_FOUND", details={"response_ids": list(ids)})


@dataclass(frozen=True)
class TrendsQuery:
    period: str
    days: int
    metric: str
    experiment_type: str

    def since(self, today: dt.date) -> dt.datetime:
        start = today - dt.timedelta(days=self.days - 1)
        return dt.datetime(start.year, start.month, start.day, tzinfo=dt.UTC)


def trends_query(period: str, metric: str, experiment_type: str) -> TrendsQuery:
    period = period or "30d"
    if period not in PERIODS:
        raise validation_error("period", period, f"must be one of {', '.join(PERIODS)}")
    metric = metric or "overall_quality"
    if metric not in METRICS:
        raise validation_error("metric", metric, f"must be one of {', '.join(METRICS)}")
    if experiment_type and experiment_type not in EXPERIMENT_TYPES:
        raise validation_error("experiment_type", experiment_type, f"must be one of {', '.join(EXPERIMENT_TYPES)}")
    return TrendsQuery(period, PERIODS[period], metric, experiment_type)


def detailed(score: Score, verdict: Verdict | None = None) -> dict[str, Any]:
    """detailed_analysis as stored and rendered: each dimension's score, factors and feedback, and the judge's
    score and rationale beside them when a judge gave one."""
    out: dict[str, Any] = {n: {"score": d.score, "factors": d.factors, "feedback": d.feedback}
                           for n, d in score.dimensions.items() if n in DIMENSIONS}
    if verdict is not None:
        for n, v in verdict.dimensions.items():
            out[n]["judge"] = {**v, "model": verdict.model}
    return out
