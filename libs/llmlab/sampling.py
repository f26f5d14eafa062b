"""Sampling-parameter bounds: the one table every inference family, the engine and the experiments service check.

    from llmlab.sampling import check_sampling
    check_sampling({"temperature": t, "top_p": p, "max_tokens": m})                    # field "temperature", ...
    check_sampling({"max_length": m}, aliases={"max_length": "max_tokens"}, prefix="parameters.")

`check_sampling` raises `validation_error(field, value, constraint)` (llmlab.runtime.errors) for the first value
out of bounds; `violation` returns the constraint wording without raising (the engine and deploy/triton's model.py,
which runs inside Triton without grpc, use it). Values given as None are "not set" and skipped. Protocols
with wider documented ranges (OpenAI accepts `top_p: 0` as greedy and `top_k: -1` as off) map those values first
and read `lo`/`hi` from `BOUNDS` for their own message wording.

This module imports only the standard library at load time for the same reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bound:
    """The values one sampling parameter may take: `lo` (excluded when `lo_open`) to `hi`, integers when `integer`."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    integer: bool = False

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if value != value:  # NaN compares false with every bound
            return False
        if self.integer and value != int(value):
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or value <= self.hi

    @property
    def constraint(self) -> str:
        """How a validation error words this bound (e.g. "must be between 0 and 2")."""
        lo, hi = _num(self.lo), _num(self.hi)
        kind = "an integer " if self.integer else ""
        if self.lo is not None and self.hi is not None:
            if self.lo_open:
                return f"must be {kind}greater than {lo} and at most {hi}"
            return f"must be {kind}between {lo} and {hi}"
        if self.lo is not None:
            return f"must be {kind}greater than {lo}" if self.lo_open else f"must be {kind}at least {lo}"
        if self.hi is not None:
            return f"must be {kind}at most {hi}"
        return f"must be {kind or 'a number'}".strip()


def _num(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


# OpenAI's documented ranges where they exist; 0 turns top_k off and 1 turns repetition_penalty off (vLLM).
BOUNDS: Mapping[str, Bound] = {
    "temperature": Bound(0, 2),
    "top_p": Bound(0, 1, lo_open=True),
    "top_k": Bound(0, None, integer=True),
    "max_tokens": Bound(1, None, integer=True),
    "frequency_penalty": Bound(-2, 2),
    "presence_penalty": Bound(-2, 2),
    "repetition_penalty": Bound(0, None, lo_open=True),
    "top_logprobs": Bound(0, 20, integer=True),
    # Choices per request: each runs as its own sequence in the engine's batch, so a few, not OpenAI's 128.
    "n": Bound(1, 16, integer=True),
}
MAX_STOP_SEQUENCES = 4  # OpenAI's limit on `stop`


def violation(name: str, value: Any) -> str | None:
    """The constraint `value` breaks for the sampling parameter `name`, or None when it is within bounds."""
    bound = BOUNDS[name]
    return None if bound.accepts(value) else bound.constraint


def check_sampling(
    values: Mapping[str, Any], *, prefix: str = "", aliases: Mapping[str, str] | None = None
) -> None:
    """Raise `validation_error(prefix + key, value, constraint)` for the first value out of bounds.

    `values` maps request field names to values (None = not set); `aliases` maps a family's own name to the
    parameter it stands for (the lab family's `max_length` is `max_tokens`). `stop` is checked for its count;
    fields the table has no bound for (`seed`, `ignore_eos`) are passed over."""
    for key, value in values.items():
        if value is None:
            continue
        if key == "stop":
            if len(value) > MAX_STOP_SEQUENCES:
                _raise(prefix + key, len(value), f"must hold at most {MAX_STOP_SEQUENCES} stop sequences")
            continue
        name = (aliases or {}).get(key, key)
        if name not in BOUNDS:  # seed, ignore_eos, ...: no bound in the table, nothing to check here
            continue
        constraint = violation(name, value)
        if constraint is not None:
            _raise(prefix + key, value, constraint)


def check_params(params: Any, *, prefix: str = "") -> None:
    """`check_sampling` over the attributes of a SamplingParams-like object that the table bounds."""
    check_sampling({name: getattr(params, name) for name in (*BOUNDS, "stop") if hasattr(params, name)},
                   prefix=prefix)


def _raise(field: str, value: Any, constraint: str) -> None:
    # Imported here, not at the top: deploy/triton's model.py imports this module inside Triton, which has no grpc.
    from llmlab.runtime.errors import validation_error

    raise validation_error(field, value, constraint)
