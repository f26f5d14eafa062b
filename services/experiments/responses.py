"""Response rules: what a generation run produces (combinations x count) and how responses are filtered (no I/O)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import FailedPrecondition, NotFound, validation_error

from . import domain
from .repository import ExperimentRow

MAX_COUNT = 100  # responses per combination (GenerateResponsesRequest.count)
MAX_GENERATIONS = 200  # responses of one run: combinations x count
MAX_COMPARE = 50
SORT_FIELDS = ("created_at", "quality", "cost")
COMPARISON_SORT_FIELDS = ("created_at", "quality", "cost", "response_time")
DEFAULT_STEP = 0.1
# Grid points are rounded so that 0.1 + 0.2 lands on 0.3 and the bound is included exactly.
GRID_DIGITS = 6


@dataclass(frozen=True)
class PlannedResponse:
    """One generation of a run: the full parameters it runs with."""

    parameters: dict[str, Any]


def _axis(name: str, ranges: dict[str, Any]) -> list[float] | None:
    lo, hi = ranges.get(f"{name}_min"), ranges.get(f"{name}_max")
    if lo is None and hi is None:
        return None
    lo = hi if lo is None else lo
    hi = lo if hi is None else hi
    step = ranges.get(f"{name}_step") or DEFAULT_STEP
    n = math.floor((hi - lo) / step + 1e-9) + 1
    return [round(lo + i * step, GRID_DIGITS) for i in range(n)]


def combinations(ranges: dict[str, Any]) -> list[dict[str, float]]:
    """Every combination of the ranges' grid points, bounds inclusive (0.2..1.0 step 0.2 is 5 points)."""
    axes = {name: values for name in domain.RANGE_PARAMETERS if (values := _axis(name, ranges)) is not None}
    return [dict(zip(axes, point, strict=True)) for point in itertools.product(*axes.values())]


def plan(
    experiment: ExperimentRow, specific: dict[str, Any], generate_all: bool, count: int | None
) -> list[PlannedResponse]:
    """The run a request asks for, validated before anything is stored."""
    count = experiment.response_count if count is None else count
    if not 1 <= count <= MAX_COUNT:
        raise validation_error("count", count, f"must be between 1 and {MAX_COUNT}")
    base = {**domain.DEFAULT_PARAMETERS, **experiment.parameters}
    if generate_all:
        if not experiment.parameter_ranges:
            raise FailedPrecondition(
                f"Experiment {experiment.id} has no parameter_ranges to generate all combinations of",
                reason="NO_PARAMETER_RANGES",
                details={"experiment_id": experiment.id, "field": "generate_all"},
            )
        combos = [{**base, **c} for c in combinations(experiment.parameter_ranges)]
    else:
        combos = [{**base, **domain.validate_parameters(specific)}]
    total = len(combos) * count
    if total > MAX_GENERATIONS:
        raise validation_error("count", count, (
            f"{len(combos)} combination(s) x {count} is {total} responses; one run generates at most "
            f"{MAX_GENERATIONS}"))
    return [PlannedResponse(c) for c in combos for _ in range(count)]


def experiment_not_found(experiment_id: int) -> NotFound:
    return NotFound(f"Experiment with ID {experiment_id} not found", reason="EXPERIMENT_NOT_FOUND",
                    details={"experiment_id": experiment_id})


def responses_not_found(ids: list[int]) -> NotFound:
    shown = ", ".join(str(i) for i in ids[:10]) + (", ..." if len(ids) > 10 else "")
    return NotFound(f"Response(s) not found: {shown}", reason="RESPONSE_NOT_FOUND",
                    details={"not_found_ids": ids})


def compare_ids(ids: list[int]) -> list[int]:
    """2..50 distinct positive ids, in request order."""
    if len(set(ids)) != len(ids):
        raise validation_error("response_ids", ids, "must not repeat an id")
    if not 2 <= len(ids) <= MAX_COMPARE:
        raise validation_error("response_ids", len(ids), f"must hold between 2 and {MAX_COMPARE} response ids")
    for i, v in enumerate(ids):
        if v < 1:
            raise validation_error(f"response_ids[{i}]", v, "must be a positive response id")
    return ids


def quality_bounds(lo_name: str, lo: float | None, hi_name: str, hi: float | None) -> None:
    for name, v in ((lo_name, lo), (hi_name, hi)):
        if v is not None and not (math.isfinite(v) and 0 <= v <= 100):
            raise validation_error(name, v, "must be between 0 and 100")
    if lo is not None and hi is not None and lo > hi:
        raise validation_error(lo_name, lo, f"must not be greater than {hi_name}")


def split_list(values: list[str]) -> list[str]:
    """`?tags=a&tags=b` and `?tags=a,b` alike: trimmed, empty entries dropped, duplicates removed."""
    out: dict[str, None] = {}
    for v in values:
        for part in v.split(","):
            if part.strip():
                out[part.strip()] = None
    return list(out)


def preview(content: str, limit: int = 100) -> str:
    """The first `limit` characters, ending in "..." when cut."""
    return content if len(content) <= limit else content[:limit].rstrip() + "..."


def page_query(page: int | None, limit: int | None, sort_by: str, sort_order: str,
               allowed: tuple[str, ...]) -> domain.ListQuery:
    """Pagination and sort of a response listing (the same bounds as experiment listings)."""
    page = 1 if page is None else page
    limit = 20 if limit is None else limit
    if page < 1:
        raise validation_error("page", page, "must be at least 1")
    if not 1 <= limit <= domain.MAX_PAGE_SIZE:
        raise validation_error("limit", limit, f"must be between 1 and {domain.MAX_PAGE_SIZE}")
    return domain.ListQuery(
        page=page, limit=limit,
        sort_by=domain.validate_choice("sort_by", sort_by or "created_at", allowed),
        sort_order=domain.validate_choice("sort_order", (sort_order or "desc").lower(), domain.SORT_ORDERS),
    )
