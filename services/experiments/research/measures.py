"""A run's metrics from its stored generations (docs/research.md "Metrics"). The reference metrics (normalised
accuracy, BLEU, ROUGE-L) come from the metrics service; the rest is counted here. No I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .repository import OutputRow


@dataclass
class Reference:
    """The metrics service's verdict on the successful generations that have a reference, in their order."""

    accuracy: list[float]  # per sample, 1.0 when the normalised output equals the normalised answer
    bleu: float | None
    rouge_l: float | None


def percentile(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else 0.0


def exact(o: OutputRow) -> float:
    return 1.0 if o.reference is not None and not o.error and o.output.strip() == o.reference.strip() else 0.0


def scored(outputs: Sequence[OutputRow]) -> list[OutputRow]:
    """The generations the reference metrics measure: succeeded, with an answer to compare with."""
    return [o for o in outputs if not o.error and o.reference is not None]


def _counts(outputs: Sequence[OutputRow], correct: dict[str, float], wanted: Sequence[str]) -> dict[str, float]:
    """Metrics of a group of generations; accuracy counts a failed generation as wrong."""
    ok = [o for o in outputs if not o.error]
    with_ref = [o for o in outputs if o.reference is not None]
    m: dict[str, float] = {}
    if "accuracy" in wanted and with_ref:
        m["accuracy"] = sum(correct.get(o.sample_key, 0.0) for o in with_ref) / len(with_ref)
    if "exact_match" in wanted and with_ref:
        m["exact_match"] = sum(exact(o) for o in with_ref) / len(with_ref)
    if "latency" in wanted and ok:
        lat = [o.latency_ms for o in ok]
        m["latency_p50_ms"] = round(percentile(lat, 50), 3)
        m["latency_p95_ms"] = round(percentile(lat, 95), 3)
        m["latency_p99_ms"] = round(percentile(lat, 99), 3)
    if "tokens_per_second" in wanted and ok:
        seconds = sum(o.latency_ms for o in ok) / 1000
        m["tokens_per_second"] = round(sum(o.completion_tokens for o in ok) / seconds, 3) if seconds > 0 else 0.0
    if "total_tokens" in wanted:
        m["total_tokens"] = float(sum(o.prompt_tokens + o.completion_tokens for o in ok))
    if "cost_usd" in wanted:
        m["cost_usd"] = round(sum(o.cost_usd for o in ok), 10)
    return m


def run_metrics(outputs: Sequence[OutputRow], ref: Reference | None, wanted: Sequence[str]) -> dict[str, float]:
    """The evaluation's metrics over every generation of the run."""
    correct = {o.sample_key: a for o, a in zip(scored(outputs), ref.accuracy, strict=True)} if ref else {}
    m = _counts(outputs, correct, wanted)
    if ref is not None:
        if "bleu" in wanted and ref.bleu is not None:
            m["bleu"] = round(ref.bleu, 6)
        if "rouge" in wanted and ref.rouge_l is not None:
            m["rouge_l"] = round(ref.rouge_l, 6)
    if "accuracy" in m:
        m["accuracy"] = round(m["accuracy"], 6)
    return dict(sorted(m.items()))


def summary(outputs: Sequence[OutputRow], ref: Reference | None, wanted: Sequence[str], samples: int,
            examples: int = 3) -> dict[str, Any]:
    """The run's `outputs`: counts, the metrics of each model x template, and a few generations to look at."""
    correct = {o.sample_key: a for o, a in zip(scored(outputs), ref.accuracy, strict=True)} if ref else {}
    groups: dict[tuple[str, str], list[OutputRow]] = {}
    for o in outputs:
        groups.setdefault((o.model_id, o.template_id), []).append(o)
    return {
        "samples": samples,
        "generations": len(outputs),
        "failed": sum(1 for o in outputs if o.error),
        "by_model_and_template": [
            {"model_id": model, "prompt_template_id": template, "generations": len(rows),
             "failed": sum(1 for o in rows if o.error), "metrics": _counts(rows, correct, wanted)}
            for (model, template), rows in groups.items()
        ],
        "examples": [
            {"model_id": o.model_id, "prompt_template_id": o.template_id, "row_index": o.row_index,
             "output": o.output[:500], "reference": o.reference, "error": o.error}
            for o in outputs[:examples]
        ],
    }
