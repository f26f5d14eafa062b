"""Experiment rules: validation, defaults, filters and the merge semantics of updates (no I/O here)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmlab.runtime import validation_error
from llmlab.runtime.errors import excerpt
from llmlab.runtime.text import scalar, visible_text
from llmlab.sampling import violation

TYPES = ("single", "batch")
STATUSES = ("draft", "queued", "running", "completed", "failed", "cancelled")  # queued, cancelled: sweeps
SORT_FIELDS = ("created_at", "updated_at", "quality", "name")
SORT_ORDERS = ("asc", "desc")
VIEW_MODES = ("list", "timeline", "grid")
BULK_ACTIONS = ("favorite", "unfavorite", "archive", "unarchive", "delete", "tag")

MAX_PAGE_SIZE = 100
MAX_BULK_IDS = 1000
MAX_TAGS = 50
MAX_TAG_LENGTH = 64
MAX_PROMPT_CHARS = 200_000
MAX_NAME_CHARS = 255
MAX_MODEL_CHARS = 200
MAX_DESCRIPTION_CHARS = 10_000
MAX_EXPERIMENT_ID = 2**31 - 1  # ids are Postgres `integer`s
# The parameters each bulk action (`POST /api/experiments/bulk`) takes, with their JSON kind; any other key is refused.
BULK_PARAMS: dict[str, dict[str, type]] = {
    "favorite": {"favorited": bool},
    "unfavorite": {"favorited": bool},
    "archive": {"archived": bool},
    "unarchive": {"archived": bool},
    "delete": {},
    "tag": {"tags": list, "remove_tags": list},
}

# The sampling parameters an experiment stores; their bounds are the platform's one table (llmlab.sampling).
PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")
DEFAULT_PARAMETERS: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 1.0,
    "max_tokens": 256,
    "frequency_penalty": 0.0,
    "presence_penalty": 0.0,
}
RANGE_PARAMETERS = ("temperature", "top_p", "frequency_penalty", "presence_penalty")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _check_number(name: str, value: Any, parameter: str | None = None) -> None:
    """A finite number within the bounds of `parameter` (default: `name`); the error names `name`."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise validation_error(name, value, "must be a finite number")
    constraint = violation(parameter or name, value)
    if constraint is not None:
        raise validation_error(name, value, constraint)


def validate_parameters(params: dict[str, Any]) -> dict[str, Any]:
    """Validate the given sampling parameters; return them unchanged (only known keys are accepted)."""
    for name, value in params.items():
        if name not in PARAMETERS:
            raise validation_error(name, value, f"unknown parameter; expected one of {', '.join(PARAMETERS)}")
        _check_number(name, value)
    return params


def validate_ranges(ranges: dict[str, Any]) -> dict[str, Any]:
    """Each range bound within the parameter's bounds, min <= max, step > 0."""
    for key, value in ranges.items():
        base, _, kind = key.rpartition("_")
        if base not in RANGE_PARAMETERS or kind not in ("min", "max", "step"):
            raise validation_error(key, value, "unknown parameter range")
        if kind == "step":
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise validation_error(key, value, "must be greater than 0")
        else:
            _check_number(key, value, base)
    for base in RANGE_PARAMETERS:
        lo, hi = ranges.get(f"{base}_min"), ranges.get(f"{base}_max")
        if lo is not None and hi is not None and lo > hi:
            raise validation_error(f"{base}_min", lo, f"must be less than or equal to {base}_max ({_fmt(hi)})")
    return ranges


def validate_name(name: str) -> str:
    return visible_text("name", name, max_chars=MAX_NAME_CHARS)


def validate_model(model: str) -> str:
    """The model's id as written; whether the registry knows it is the servicer's question (it needs I/O)."""
    return visible_text("model", model, max_chars=MAX_MODEL_CHARS)


def validate_description(description: str) -> str:
    return visible_text("description", description, max_chars=MAX_DESCRIPTION_CHARS, required=False)


def validate_choice(field_name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise validation_error(field_name, value, f"must be one of {', '.join(choices)}")
    return value


def validate_required_text(field_name: str, value: str, max_chars: int) -> str:
    if len(value) > max_chars:
        raise validation_error(field_name, len(value), f"must be at most {max_chars} characters")
    if not value.strip():
        raise validation_error(field_name, value, "is required")
    return value


def validate_tags(tags: list[Any], field_name: str = "tags") -> list[str]:
    """Trimmed, visible, at most MAX_TAG_LENGTH characters each, duplicates dropped, at most MAX_TAGS."""
    if len(tags) > MAX_TAGS * 4:  # refuse a huge list before looking at each entry
        raise validation_error(field_name, len(tags), f"must hold at most {MAX_TAGS} tags")
    seen: dict[str, None] = {}
    for tag in tags:
        seen[visible_text(field_name, tag, max_chars=MAX_TAG_LENGTH)] = None
    if len(seen) > MAX_TAGS:
        raise validation_error(field_name, len(seen), f"must hold at most {MAX_TAGS} tags")
    return list(seen)


def validate_response_count(value: int) -> int:
    if not 1 <= value <= 100:
        raise validation_error("response_count", value, "must be between 1 and 100")
    return value


@dataclass
class NewExperiment:
    """A validated create request."""

    name: str
    description: str
    type: str
    model: str
    prompt: str
    parameters: dict[str, Any]
    parameter_ranges: dict[str, Any] | None
    response_count: int
    tags: list[str]


def new_experiment(
    *,
    name: str,
    description: str,
    type: str,
    model: str,
    prompt: str,
    parameters: dict[str, Any],
    parameter_ranges: dict[str, Any] | None,
    response_count: int | None,
    tags: list[str],
) -> NewExperiment:
    return NewExperiment(
        name=validate_name(name),
        description=validate_description(description),
        type=validate_choice("type", type or "single", TYPES),
        model=validate_model(model),
        prompt=validate_required_text("prompt", prompt, MAX_PROMPT_CHARS),
        parameters={**DEFAULT_PARAMETERS, **validate_parameters(parameters)},
        parameter_ranges=validate_ranges(parameter_ranges) if parameter_ranges else None,
        response_count=validate_response_count(1 if response_count is None else response_count),
        tags=validate_tags(tags),
    )


@dataclass
class ExperimentPatch:
    """The fields an update changes; None means "leave as is"."""

    name: str | None = None
    description: str | None = None
    type: str | None = None
    model: str | None = None
    prompt: str | None = None
    status: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    parameter_ranges: dict[str, Any] = field(default_factory=dict)
    response_count: int | None = None
    tags: list[str] | None = None
    favorited: bool | None = None
    archived: bool | None = None

    def validate(self) -> ExperimentPatch:
        if self.name is not None:
            self.name = validate_name(self.name)
        if self.description is not None:
            self.description = validate_description(self.description)
        if self.type is not None:
            validate_choice("type", self.type, TYPES)
        if self.status is not None:
            validate_choice("status", self.status, STATUSES)
        if self.model is not None:
            self.model = validate_model(self.model)
        if self.prompt is not None:
            validate_required_text("prompt", self.prompt, MAX_PROMPT_CHARS)
        validate_parameters(self.parameters)
        if self.response_count is not None:
            validate_response_count(self.response_count)
        if self.tags is not None:
            self.tags = validate_tags(self.tags)
        return self

    def merged_ranges(self, current: dict[str, Any] | None) -> dict[str, Any] | None:
        """Ranges after the update, validated as a whole (a new min must not pass the stored max)."""
        if not self.parameter_ranges:
            return current
        return validate_ranges({**(current or {}), **self.parameter_ranges})


def parse_date(field_name: str, value: str, *, end_of_day: bool) -> dt.datetime | None:
    """ISO 8601 date or date-time; a bare date as an upper bound means the end of that day (exclusive)."""
    if not value:
        return None
    text = value.strip()
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text)
            start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
            return start + dt.timedelta(days=1) if end_of_day else start
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise validation_error(field_name, value, "must be an ISO 8601 date or date-time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


@dataclass
class ListQuery:
    """Validated list/history filters."""

    page: int = 1
    limit: int = 20
    search: str = ""
    type: str = ""
    status: str = ""
    model: str = ""
    date_from: dt.datetime | None = None
    date_to: dt.datetime | None = None
    date_to_exclusive: bool = False
    favorited: bool | None = None
    include_archived: bool = False
    sort_by: str = "created_at"
    sort_order: str = "desc"

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.limit


def list_query(
    *,
    page: int | None,
    limit: int | None,
    search: str = "",
    type: str = "",
    status: str = "",
    model: str = "",
    date_from: str = "",
    date_to: str = "",
    favorited: bool | None = None,
    archived: bool | None = None,
    sort_by: str = "",
    sort_order: str = "",
) -> ListQuery:
    page = 1 if page is None else page
    limit = 20 if limit is None else limit
    if page < 1:
        raise validation_error("page", page, "must be at least 1")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise validation_error("limit", limit, f"must be between 1 and {MAX_PAGE_SIZE}")
    if type:
        validate_choice("type", type, TYPES)
    if status:
        validate_choice("status", status, STATUSES)
    q = ListQuery(
        page=page,
        limit=limit,
        search=search.strip(),
        type=type,
        status=status,
        model=model.strip(),
        date_from=parse_date("date_from", date_from, end_of_day=False),
        date_to=parse_date("date_to", date_to, end_of_day=True),
        date_to_exclusive=len(date_to.strip()) == 10,
        favorited=favorited,
        include_archived=bool(archived),
        sort_by=validate_choice("sort_by", sort_by or "created_at", SORT_FIELDS),
        sort_order=validate_choice("sort_order", (sort_order or "desc").lower(), SORT_ORDERS),
    )
    if q.date_from and q.date_to and q.date_from > q.date_to:
        raise validation_error("date_from", date_from, "must not be after date_to")
    return q


@dataclass
class BulkAction:
    """A validated bulk request: what each experiment gets."""

    action: str
    ids: list[int]
    favorited: bool | None = None
    archived: bool | None = None
    add_tags: list[str] = field(default_factory=list)
    remove_tags: list[str] = field(default_factory=list)


def _bulk_ids(values: Any) -> list[int]:
    """Every entry a positive integer (a JSON number: not null, not "7", not 1.5, not true); duplicates dropped."""
    if values is None:
        raise validation_error("experiment_ids", None, f"is required: a list of 1 to {MAX_BULK_IDS} experiment ids")
    if not isinstance(values, list):
        raise validation_error("experiment_ids", scalar(values), "must be a list of experiment ids")
    if not 1 <= len(values) <= MAX_BULK_IDS:
        raise validation_error("experiment_ids", len(values), f"must hold between 1 and {MAX_BULK_IDS} ids")
    ids: dict[int, None] = {}
    for i, v in enumerate(values):
        if (
            isinstance(v, bool)
            or not isinstance(v, int | float)
            or not math.isfinite(v)
            or not float(v).is_integer()
            or not 1 <= v <= MAX_EXPERIMENT_ID
        ):
            raise validation_error(f"experiment_ids[{i}]", scalar(v), "must be a positive integer experiment id")
        ids[int(v)] = None
    return list(ids)


def _bulk_params(action: str, params: Any) -> dict[str, Any]:
    """The action's own parameters, each of its kind; a key the action does not take is refused, not ignored."""
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise validation_error("params", scalar(params), "must be an object")
    allowed = BULK_PARAMS[action]
    for key, v in params.items():
        field_name = f"params.{excerpt(key)}"
        if key not in allowed:
            expected = f"it takes {', '.join(allowed)}" if allowed else "it takes no parameters"
            raise validation_error(field_name, scalar(v), f"is not a parameter of the {action} action; {expected}")
        if allowed[key] is bool and not isinstance(v, bool):
            raise validation_error(field_name, scalar(v), "must be true or false")
        if allowed[key] is list and not isinstance(v, list):
            raise validation_error(field_name, scalar(v), "must be a list of tags")
    return params


def bulk_action(action: str, ids: Any, params: Any) -> BulkAction:
    """Validate a whole bulk request (`POST /api/experiments/bulk`) before anything changes. `ids` and `params` are
    the JSON values as the client sent them (a list, an object, or None when absent)."""
    validate_choice("action", action, BULK_ACTIONS)
    result = BulkAction(action=action, ids=_bulk_ids(ids))
    given = _bulk_params(action, params)
    if action in ("favorite", "unfavorite"):
        result.favorited = given.get("favorited", action == "favorite")
    elif action in ("archive", "unarchive"):
        result.archived = given.get("archived", action == "archive")
    elif action == "tag":
        result.add_tags = validate_tags(given.get("tags", []), "params.tags")
        result.remove_tags = validate_tags(given.get("remove_tags", []), "params.remove_tags")
        if not result.add_tags and not result.remove_tags:
            raise validation_error("params.tags", [], "the tag action needs params.tags or params.remove_tags")
    return result


@dataclass
class TimelineRow:
    """One UTC day of the history timeline."""

    date: str
    ids: list[int]
    average_quality: float | None
    count: int


def timeline(rows: Sequence[Any]) -> list[TimelineRow]:
    """`timeline_data` of a history page: the page's experiments grouped by UTC day of creation, newest day
    first, each day's ids oldest first, its average quality over the experiments that have one (docs/scale.md:
    the timeline pages with the list, so a page costs the same at a million experiments as at ten)."""
    days: dict[str, list[Any]] = {}
    for r in rows:
        days.setdefault(r.created_at.astimezone(dt.UTC).strftime("%Y-%m-%d"), []).append(r)
    out = []
    for day in sorted(days, reverse=True):
        group = sorted(days[day], key=lambda r: (r.created_at, r.id))
        scored = [r.quality_score for r in group if r.quality_score is not None]
        out.append(TimelineRow(day, [r.id for r in group], sum(scored) / len(scored) if scored else None, len(group)))
    return out
