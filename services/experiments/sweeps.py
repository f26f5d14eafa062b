"""Sweep rules (docs/sweeps.md): the parameter grid and its combinations, per-response seeds, the priority queues,
estimates and progress arithmetic. No I/O here."""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import NotFound, validation_error
from llmlab.sampling import violation

from . import domain

PRIORITIES = ("high", "normal", "low")  # the order workers read the queues in
STATUSES = ("queued", "running", "completed", "failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled")
SWEPT = ("temperature", "top_p", "frequency_penalty", "presence_penalty")  # grid order: temperature outer
GRID_KEYS = (*SWEPT, "max_tokens")
MAX_COMBINATIONS = 1000
MAX_PER_COMBINATION = 100
MAX_SEED = 2**31 - 1
# Grid points are rounded so that 0.1 + 0.2 lands on 0.3 and the upper bound is included exactly.
GRID_DIGITS = 6
GRID_EPSILON = 1e-9
QUEUE_PREFIX = "experiments.sweeps"
GROUP = "experiments-sweep-workers"
EVENT = "sweep.combination"
# Prompt tokens are estimated at this many characters per token before anything is tokenized (English text under
# a BPE vocabulary averages about four).
CHARS_PER_TOKEN = 4


def queue_name(priority: str) -> str:
    return f"{QUEUE_PREFIX}.{priority}"


@dataclass(frozen=True)
class Grid:
    """A validated grid: the values of each swept parameter and the fixed ones."""

    axes: dict[str, list[float]]
    fixed: dict[str, Any]

    def combinations(self) -> list[dict[str, Any]]:
        """Every combination's full parameters, temperature outer, top_p inner, then the penalties."""
        names = [n for n in SWEPT if n in self.axes]
        return [{**self.fixed, **dict(zip(names, point, strict=True))}
                for point in itertools.product(*(self.axes[n] for n in names))]

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.axes.values())

    def ranges(self) -> dict[str, float]:
        """The experiment's parameter_ranges view of the swept axes (`temperature_min`, ...)."""
        out: dict[str, float] = {}
        for name, values in self.axes.items():
            out[f"{name}_min"], out[f"{name}_max"] = values[0], values[-1]
            if len(values) > 1:
                out[f"{name}_step"] = round(values[1] - values[0], GRID_DIGITS)
        return out


def _number(field: str, value: Any, parameter: str) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise validation_error(field, value, "must be a finite number")
    constraint = violation(parameter, value)
    if constraint is not None:
        raise validation_error(field, value, constraint)
    return float(value)


def _axis(name: str, spec: dict[str, Any]) -> list[float]:
    field = f"parameter_grid.{name}"
    for key in spec:
        if key not in ("min", "max", "step"):
            raise validation_error(f"{field}.{key}", spec[key], "unknown range key; expected min, max and step")
    for key in ("min", "max"):
        if key not in spec:
            raise validation_error(f"{field}.{key}", None, "is required in a range")
    lo, hi = _number(f"{field}.min", spec["min"], name), _number(f"{field}.max", spec["max"], name)
    if lo > hi:
        raise validation_error(f"{field}.min", spec["min"], f"must be less than or equal to max ({spec['max']})")
    if lo == hi:
        return [lo]
    step = spec.get("step")
    if not isinstance(step, int | float) or isinstance(step, bool) or not math.isfinite(step) or step <= 0:
        raise validation_error(f"{field}.step", step, "must be a number greater than 0")
    n = math.floor((hi - lo) / step + GRID_EPSILON) + 1
    if n > MAX_COMBINATIONS:
        raise validation_error(f"{field}.step", step, f"gives {n} values; a sweep has at most {MAX_COMBINATIONS} "
                                                      "combinations")
    return [round(lo + i * step, GRID_DIGITS) for i in range(n)]


def parse_grid(grid: dict[str, Any]) -> Grid:
    """`parameter_grid`: each swept parameter a number or {min, max, step}; max_tokens a fixed integer."""
    axes: dict[str, list[float]] = {}
    fixed: dict[str, Any] = dict(domain.DEFAULT_PARAMETERS)
    for name, spec in grid.items():
        if name not in GRID_KEYS:
            raise validation_error(f"parameter_grid.{name}", spec,
                                   f"unknown parameter; expected one of {', '.join(GRID_KEYS)}")
        if name == "max_tokens":
            if isinstance(spec, dict):
                raise validation_error("parameter_grid.max_tokens", spec, "must be a fixed integer, not a range")
            fixed["max_tokens"] = int(_number("parameter_grid.max_tokens", spec, "max_tokens"))
        elif isinstance(spec, dict):
            values = _axis(name, spec)
            if len(values) == 1:
                fixed[name] = values[0]
            else:
                axes[name] = values
        else:
            fixed[name] = _number(f"parameter_grid.{name}", spec, name)
    out = Grid(axes, fixed)
    if out.size > MAX_COMBINATIONS:
        raise validation_error("parameter_grid", out.size,
                               f"is {out.size} combinations; a sweep has at most {MAX_COMBINATIONS}")
    return out


@dataclass(frozen=True)
class NewSweep:
    """A validated `POST /api/batch-experiments`."""

    name: str
    description: str
    prompt: str
    model: str
    grid: Grid
    raw_grid: dict[str, Any]
    per_combination: int
    priority: str
    seed: int | None

    @property
    def total_combinations(self) -> int:
        return self.grid.size

    @property
    def total_responses(self) -> int:
        return self.grid.size * self.per_combination


def validate(name: str, description: str, prompt: str, model: str, grid: dict[str, Any] | None,
             per_combination: int | None, priority: str, seed: int | None, max_responses: int) -> NewSweep:
    name = domain.validate_name(name)
    description = domain.validate_description(description)
    prompt = domain.validate_required_text("prompt", prompt, domain.MAX_PROMPT_CHARS)
    model = domain.validate_model(model)
    parsed = parse_grid(grid or {})
    k = 1 if per_combination is None else per_combination
    if not 1 <= k <= MAX_PER_COMBINATION:
        raise validation_error("responses_per_combination", k, f"must be between 1 and {MAX_PER_COMBINATION}")
    priority = domain.validate_choice("priority", priority or "normal", PRIORITIES)
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise validation_error("seed", seed, f"must be between 0 and {MAX_SEED}")
    total = parsed.size * k
    if total > max_responses:
        raise validation_error("responses_per_combination", k, (
            f"{parsed.size} combination(s) x {k} is {total} responses; a sweep generates at most {max_responses}"))
    return NewSweep(name, description, prompt, model, parsed, grid or {}, k, priority, seed)


def response_seed(base: int, combination_id: int, iteration: int) -> int:
    """The sampling seed of response (combination_id, iteration): a hash of the three, 0..2^31-1, so that it does
    not depend on which worker or attempt generates it."""
    digest = hashlib.blake2b(f"{base}:{combination_id}:{iteration}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & MAX_SEED


def estimate_prompt_tokens(prompt: str) -> int:
    return max(1, math.ceil(len(prompt) / CHARS_PER_TOKEN))


def duration_text(seconds: float) -> str:
    """"45m" style: whole minutes (at least 1m) below an hour, "1h5m" above."""
    minutes = max(1, math.ceil(seconds / 60))
    if minutes < 60:
        return f"{minutes}m"
    return f"{minutes // 60}h{minutes % 60}m" if minutes % 60 else f"{minutes // 60}h"


@dataclass(frozen=True)
class Eta:
    """Time left and expected completion of a sweep, and how they were obtained."""

    seconds: float
    completion: dt.datetime
    method: str

    @property
    def minutes(self) -> int:
        return math.ceil(self.seconds / 60) if self.seconds > 0 else 0


def eta(status: str, total: int, done: int, started_at: dt.datetime | None, finished_at: dt.datetime | None,
        estimated_seconds: float, now: dt.datetime) -> Eta:
    """Running with progress: this sweep's own rate (done / elapsed) over what is left. Queued or no progress yet:
    the creation estimate (from the engine's measured throughput). Finished: the actual completion time."""
    if status in FINISHED:
        return Eta(0.0, finished_at or now, "finished")
    if status == "running" and started_at is not None and done > 0:
        elapsed = max((now - started_at).total_seconds(), 1e-3)
        left = elapsed / done * (total - done)
        return Eta(left, now + dt.timedelta(seconds=left), "observed_rate")
    left = estimated_seconds * (1 - done / total) if total else 0.0
    return Eta(left, now + dt.timedelta(seconds=left), "engine_throughput")


def percentage(done: int, total: int) -> int:
    return min(100, done * 100 // total) if total else 0


def not_found(sweep_id: int) -> NotFound:
    return NotFound(f"Batch experiment with ID {sweep_id} not found", reason="BATCH_EXPERIMENT_NOT_FOUND",
                    details={"batch_experiment_id": sweep_id})
