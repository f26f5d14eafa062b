"""Training jobs' rules, no I/O (docs/training.md): hyperparameter defaults and bounds, the training file's format
with a per-line report, the state machine and each family's spelling of it."""

from __future__ import annotations

import json
import pathlib
import re
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import InvalidArgument, validation_error
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
MAX_EXAMPLES = 50_000
MAX_LENGTH = 256  # tokens per example the trainer keeps (the embedded model's examples are short)
MAX_REPORTED = 20  # bad lines listed in one error

LAB_STATUS = {"pending": "PENDING", "validating_files": "PENDING", "queued": "PENDING", "running": "RUNNING",
              "paused": "PAUSED", "succeeded": "COMPLETED", "failed": "FAILED", "cancelled": "CANCELLED"}
OPENAI_STATUS = {"pending": "queued", "validating_files": "validating_files", "queued": "queued",
                 "running": "running", "paused": "paused", "succeeded": "succeeded", "failed": "failed",
                 "cancelled": "cancelled"}
PAUSABLE = ("running",)
RESUMABLE = ("paused",)
CANCELLABLE = ("pending", "validating_files", "queued", "running", "paused")
ROLES = ("system", "user", "assistant")
_SUFFIX = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check_range(name: str, v: float, field: str | None = None) -> float:
    lo, hi = BOUNDS[name]
    if not lo <= v <= hi:
        raise validation_error(field or name, v, f"must be between {lo:g} and {hi:g}")
    return v


@dataclass
class Examples:
    jsonl: str  # one normalised {"messages": [...]} per line
    count: int
    assistant_chars: int


def parse_examples(text: str, field: str) -> Examples:
    """A chat JSONL file (OpenAI's fine-tuning format) checked line by line; every bad line is reported with its
    number (the first MAX_REPORTED of them)."""
    problems: list[str] = []
    lines: list[str] = []
    chars = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        why = _example_problem(line)
        if why is not None:
            problems.append(f"line {number}: {why}")
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in json.loads(line)["messages"]]
        chars += sum(len(m["content"]) for m in messages if m["role"] == "assistant")
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise InvalidArgument(
            f"The {field} has {len(problems)} invalid line(s): {'; '.join(shown)}{more}",
            reason="INVALID_TRAINING_FILE",
            details={"field": field, "errors": shown, "invalid_lines": len(problems)},
            field_violations=[(field, p) for p in shown],
        )
    if not lines:
        raise validation_error(field, "", "must hold at least one example (JSONL of {\"messages\": [...]})")
    if len(lines) > MAX_EXAMPLES:
        raise validation_error(field, len(lines), f"must hold at most {MAX_EXAMPLES} examples")
    return Examples("\n".join(lines) + "\n", len(lines), chars)


def _example_problem(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})"
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return "expected an object with a non-empty \"messages\" array"
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string"
        if "\x00" in m["content"]:
            return f"messages[{i}].content contains a NUL character"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in obj["messages"]):
        return "no assistant message to learn from"
    return None


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
