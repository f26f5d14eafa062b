"""Research-view rules (docs/research.md): experiment bodies and config, deep merge, cursors, start checks. No I/O."""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import json
import math
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from llmlab.runtime import InvalidArgument
from llmlab.runtime.text import visible_text
from llmlab.sampling import BOUNDS, violation

from .. import domain as lab

STATUSES = lab.STATUSES
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
# The evaluation metrics a run can compute (docs/research.md "Metrics"): `latency` yields latency_p50/p95/p99_ms,
# `rouge` yields rouge_l; accuracy, exact_match, bleu and rouge compare each output with the row's answer field.
METRICS = ("accuracy", "exact_match", "bleu", "rouge", "latency", "tokens_per_second", "total_tokens", "cost_usd")
REFERENCE_METRICS = ("accuracy", "exact_match", "bleu", "rouge")
DEFAULT_METRICS = METRICS
PARAMETERS = ("temperature", "top_p", "top_k", "max_tokens", "frequency_penalty", "presence_penalty")
DEFAULT_NUM_SAMPLES = 100
MAX_NUM_SAMPLES = 10_000  # per run: sampled rows x templates x models generations are planned from it
MAX_IDS = 20
DEFAULT_ANSWER_FIELD = "answer"
MAX_RUN_GENERATIONS = 10_000  # the metrics service measures at most this many samples at once


class Fields:
    """Collects every field problem of a body, so that one 400 names them all (`details.fields`)."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}

    def add(self, name: str, problem: str) -> None:
        self.problems.setdefault(name, problem)

    @contextlib.contextmanager
    def check(self, prefix: str = "") -> Iterator[None]:
        """Run a validator of the lab rules; its InvalidArgument becomes a collected field problem."""
        try:
            yield
        except InvalidArgument as exc:
            for f, d in exc.field_violations or [("body", exc.message)]:
                self.add(prefix + f, d)

    def raise_if_any(self, message: str = "Invalid request body") -> None:
        if self.problems:
            raise invalid(self.problems, message)


def invalid(fields: Mapping[str, str], message: str = "Invalid request body") -> InvalidArgument:
    """400 `validation_error` with `details.fields` {field: problem} (the gateway renders BadRequest so)."""
    return InvalidArgument(message, field_violations=list(fields.items()))


def parse_uuid(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise invalid({name: "must be a UUID"}, f"{name} is not a valid UUID") from None


def _uuid_list(fields: Fields, name: str, value: Any) -> list[str]:
    if not isinstance(value, list):
        fields.add(name, "must be an array of UUIDs")
        return []
    if len(value) > MAX_IDS:
        fields.add(name, f"must hold at most {MAX_IDS} ids")
        return []
    out: list[str] = []
    for i, item in enumerate(value):
        try:
            u = str(uuid.UUID(item)) if isinstance(item, str) else None
        except ValueError:
            u = None
        if u is None:
            fields.add(f"{name}[{i}]", "must be a UUID")
        elif u not in out:
            out.append(u)
    return out


def _integer(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x == int(x)


def normalise_config(config: Mapping[str, Any], fields: Fields, prefix: str = "config.") -> dict[str, Any]:
    """Validate the known keys of a research config (others are kept as given) and normalise numbers."""
    out = dict(config)
    for key in ("model_ids", "dataset_ids", "prompt_template_ids"):
        if key in out:
            out[key] = _uuid_list(fields, prefix + key, out[key])
    params = out.get("parameters")
    if params is not None:
        if not isinstance(params, dict):
            fields.add(prefix + "parameters", "must be an object")
        else:
            for name, v in params.items():
                where = f"{prefix}parameters.{name}"
                if name not in PARAMETERS:
                    fields.add(where, f"unknown parameter; expected one of {', '.join(PARAMETERS)}")
                elif not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v):
                    fields.add(where, "must be a number")
                elif (problem := violation(name, v)) is not None:
                    label = name.replace("_", " ").capitalize()
                    fields.add(where, f"{label} {problem}")
                elif BOUNDS[name].integer:
                    params[name] = int(v)
    metrics = out.get("evaluation_metrics")
    if metrics is not None:
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            fields.add(prefix + "evaluation_metrics", "must be an array of metric names")
        else:
            unknown = [m for m in metrics if m not in METRICS]
            if unknown:
                fields.add(prefix + "evaluation_metrics",
                           f"unknown metric {unknown[0]!r}; expected any of {', '.join(METRICS)}")
            out["evaluation_metrics"] = list(dict.fromkeys(metrics))
    for key, lo, hi in (("num_samples", 1, MAX_NUM_SAMPLES), ("random_seed", 0, 2**63 - 1)):
        if key in out and out[key] is not None:
            v = out[key]
            if not _integer(v) or not lo <= v <= hi:
                fields.add(prefix + key, f"must be an integer between {lo} and {hi}")
            else:
                out[key] = int(v)
    if "answer_field" in out and (not isinstance(out["answer_field"], str) or not out["answer_field"]):
        fields.add(prefix + "answer_field", "must be a non-empty string")
    return out


@dataclass
class NewResearchExperiment:
    name: str
    description: str
    hypothesis: str
    owner_id: str
    collaborators: list[str]
    tags: list[str]
    config: dict[str, Any]
    metadata: dict[str, Any]


def new_experiment(body: Mapping[str, Any], caller: str | None) -> NewResearchExperiment:
    """Validate POST /experiments' body (every problem at once); owner_id defaults to the caller."""
    fields = Fields()
    name = body.get("name", "")
    with fields.check():
        name = lab.validate_name(name)
    description = body.get("description", "")
    with fields.check():
        description = lab.validate_description(description)
    hypothesis = body.get("hypothesis", "")
    with fields.check():
        hypothesis = visible_text("hypothesis", hypothesis, max_chars=lab.MAX_DESCRIPTION_CHARS, required=False)
    owner = body.get("owner_id") or caller or ""
    if body.get("owner_id"):
        owner = _one_uuid(fields, "owner_id", owner)
    collaborators = _uuid_list(fields, "collaborators", list(body.get("collaborators") or []))
    tags: list[str] = []
    with fields.check():
        tags = lab.validate_tags(list(body.get("tags") or []))
    config = normalise_config(body.get("config") or {}, fields)
    fields.raise_if_any()
    return NewResearchExperiment(name, description, hypothesis, owner, collaborators, tags, config,
                                 dict(body.get("metadata") or {}))


def _one_uuid(fields: Fields, name: str, value: Any) -> str:
    try:
        return str(uuid.UUID(value))
    except (ValueError, AttributeError, TypeError):
        fields.add(name, "must be a UUID")
        return ""


def patch(body: Mapping[str, Any]) -> dict[str, Any]:
    """Validate PUT /experiments/{id}'s present fields; the changes to write (config replaced when present)."""
    fields = Fields()
    out: dict[str, Any] = {}
    if "name" in body:
        with fields.check():
            out["name"] = lab.validate_name(body["name"])
    if "description" in body:
        with fields.check():
            out["description"] = lab.validate_description(body["description"])
    if "hypothesis" in body:
        with fields.check():
            out["hypothesis"] = visible_text("hypothesis", body["hypothesis"],
                                                 max_chars=lab.MAX_DESCRIPTION_CHARS, required=False)
    if "collaborators" in body:
        out["collaborators"] = _uuid_list(fields, "collaborators", body["collaborators"])
    if "tags" in body:
        if not isinstance(body["tags"], list):
            fields.add("tags", "must be an array of strings")
        else:
            with fields.check():
                out["tags"] = lab.validate_tags(body["tags"])
    if "config" in body:
        out["config"] = normalise_config(body["config"], fields)
    if "metadata" in body:
        out["metadata"] = dict(body["metadata"])
    fields.raise_if_any()
    return out


def deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Objects merge key by key (recursively); any other value replaces."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


# ---- listing

@dataclass
class ResearchListQuery:
    limit: int
    offset: int | None
    after: tuple[dt.datetime, int] | None
    status: str | None = None
    owner_id: str | None = None
    tags: list[str] = field(default_factory=list)

    def link_query(self) -> list[tuple[str, str]]:
        """The filters as query parameters, for links that keep them."""
        q: list[tuple[str, str]] = []
        if self.status:
            q.append(("status", self.status))
        if self.owner_id:
            q.append(("owner_id", self.owner_id))
        if self.tags:
            q.append(("tags", ",".join(self.tags)))
        return q


def page_bounds(limit: int | None, offset: int | None) -> tuple[int, int | None]:
    fields = Fields()
    limit = DEFAULT_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_LIMIT:
        fields.add("limit", f"must be between 1 and {MAX_LIMIT}")
    if offset is not None and offset < 0:
        fields.add("offset", "must be 0 or more")
    fields.raise_if_any("Invalid query parameters")
    return limit, offset


def list_query(limit: int | None, offset: int | None, after: str, status: str, owner_id: str,
               tags: list[str]) -> ResearchListQuery:
    limit, offset = page_bounds(limit, offset)
    fields = Fields()
    if offset is not None and after:
        fields.add("offset", "cannot be combined with after (cursor paging)")
    if status and status not in STATUSES:
        fields.add("status", f"must be one of {', '.join(STATUSES)}")
    owner = _one_uuid(fields, "owner_id", owner_id) if owner_id else None
    split = [t.strip() for item in tags for t in item.split(",") if t.strip()]
    cursor = None
    if after:
        try:
            cursor = decode_cursor(after)
        except ValueError:
            fields.add("after", "is not a cursor this API issued")
    fields.raise_if_any("Invalid query parameters")
    return ResearchListQuery(limit, offset, cursor, status or None, owner, list(dict.fromkeys(split)))


def encode_cursor(created_at: dt.datetime, seq: int) -> str:
    """Opaque keyset cursor over the list order (created_at, id) descending: stable when rows are added."""
    raw = json.dumps([created_at.isoformat(), seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, seq = json.loads(raw)
        when = dt.datetime.fromisoformat(created)
        if when.tzinfo is None or not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**63:
            raise ValueError("bad cursor")
        return when, seq
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError("bad cursor") from exc


def offset_links(path: str, q: list[tuple[str, str]], limit: int, offset: int, total: int) -> dict[str, Any]:
    """`links` {self, next, first, last} keeping the filters (next is None on the last page)."""
    import urllib.parse

    def link(o: int) -> str:
        return f"{path}?{urllib.parse.urlencode([('limit', str(limit)), ('offset', str(o)), *q])}"

    last = ((total - 1) // limit) * limit if total else 0
    return {"self": link(offset), "next": link(offset + limit) if offset + limit < total else None,
            "first": link(0), "last": link(last)}


# ---- start and runs

def effective_metrics(config: Mapping[str, Any]) -> list[str]:
    return list(config.get("evaluation_metrics") or DEFAULT_METRICS)


def answer_field(config: Mapping[str, Any]) -> str:
    return str(config.get("answer_field") or DEFAULT_ANSWER_FIELD)


def needs_answers(config: Mapping[str, Any]) -> bool:
    return any(m in REFERENCE_METRICS for m in effective_metrics(config))


def missing_config(config: Mapping[str, Any]) -> str | None:
    """What a config lacks to run, as the 422's reason, or None."""
    if not config.get("model_ids"):
        return "no models configured (config.model_ids)"
    if not config.get("dataset_ids"):
        return "no datasets configured (config.dataset_ids)"
    if not config.get("prompt_template_ids"):
        return "no prompt templates configured (config.prompt_template_ids)"
    return None


def num_samples(config: Mapping[str, Any]) -> int:
    return int(config.get("num_samples") or DEFAULT_NUM_SAMPLES)
