"""Training jobs' rules, no I/O (docs/training.md): hyperparameter defaults and bounds, the state machine and each
family's spelling of it. The training file's format is llmlab.chat_jsonl's."""

from __future__ import annotations

import pathlib
import re
from typing import Any

from llmlab.chat_jsonl import Examples, parse_examples
from llmlab.runtime import validation_error
from llmlab.runtime.errors import excerpt

BUILTIN_DATA = pathlib.Path(__file__).with_name("data") / "builtin.jsonl"
BUILTIN_NOTE = "No training_file given: using the built-in instruction set (24 examples, docs/training.md)"

# Seed 002's defaults; OpenAI's "auto" resolves to the same values (learning rate = BASE_LR x multiplier).
DEFAULTS: dict[str, Any] = {"epochs": 3, "learning_rate": 1e-4, "batch_size": 8, "lora_r": 8, "lora_alpha": 32,
                            "lora_dropout": 0.05}
BASE_LR = 2e-4
# Inclusive bounds; the table's CHECKs say the same (migrations/0016_training_jobs.sql).
BOUNDS: dict[str, tuple[float, float]] = {
    "epochs": (1, 50), "learning_rate": (1e-7, 1.0), "batch_size": (1, 256), "lora_r": (1, 256),
    "lora_alpha": (1, 1024), "lora_dropout": (0.0, 0.95), "learning_rate_multiplier": (0.01, 100.0),
}
MAX_LENGTH = 256  # tokens per example the trainer keeps (the embedded model's examples are short)

LAB_STATUS = {"pending": "PENDING", "validating_files": "PENDING", "queued": "PENDING", "running": "RUNNING",
              "paused": "PAUSED", "succeeded": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED"}
OPENAI_STATUS = {"pending": "queued", "validating_files": "validating_files", "queued": "queued",
                 "running": "running", "paused": "paused", "succeeded": "succeeded", "failed": "failed",
                 "cancelled": "cancelled"}
PAUSABLE = ("running",)
RESUMABLE = ("paused",)
CANCELLABLE = ("pending", "validating_files", "queued", "running", "paused")
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_range(name: str, v: float, field: str | None = None) -> float:
    lo, hi = BOUNDS[name]
    if not lo <= v <= hi:
        raise validation_error(field or name, v, f"must be between {lo:g} and {hi:g}")
    return v


def builtin_examples() -> Examples:
    return parse_examples(BUILTIN_DATA.read_text(), "training_file")


def check_suffix(suffix: str) -> str | None:
    if not suffix:
        return None
    if not _SUFFIX.match(suffix):
        raise validation_error("suffix", excerpt(suffix, 80),
                               "must be 1-40 lower-case letters, digits or hyphens, starting with a letter or digit")
    return suffix


def fine_tuned_model_id(base: str, suffix: str | None, public_id: str, family: str) -> str:
    """The registered model's id: OpenAI's `ft:<base>:<suffix>:<job id>` for fine-tuning jobs (docs/training.md),
    `<base>-ft-<job>` (with the suffix when given) for lab jobs."""
    job = public_id.removeprefix("ftjob-")
    if family == "openai":
        return f"ft:{base}:{suffix or 'llmlab'}:{job}"
    return f"{base}-ft-{suffix + '-' if suffix else ''}{job}"


__all__ = ["Examples", "parse_examples"]
