"""The files service's rules, no I/O: purposes, dataset fields, paging, ids, sizes, export options."""

from __future__ import annotations

import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from llmlab.runtime import InvalidArgument, NotFound, validation_error
from llmlab.runtime.errors import excerpt

from . import rows

# OpenAI's upload purposes (https://platform.openai.com/docs/api-reference/files/create) and the ones the
# platform writes itself (StoreFile).
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
PLATFORM_PURPOSES = ("batch_output", "fine-tune-results", "assistants_output")
DATASET_FORMATS = ("jsonl", "json", "csv")
EXPORT_FORMATS = ("json", "csv", "xlsx", "pdf")
REPORT_TYPES = ("quality_analysis",)
MAX_NAME = 255
MAX_FILENAME = 255
MAX_TAGS = 100
MAX_BATCH_EXPERIMENTS = 100
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]+")


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def serving_error(message: str, param: str | None, code: str = "invalid_request_error",
                  http_status: int | None = None) -> InvalidArgument:
    """A 400 for the serving family: OpenAI's `param` comes from the metadata (gateway/errors.lua)."""
    meta = {"param": param} if param else {}
    return InvalidArgument(message, reason=code, metadata=meta, http_status=http_status)


def too_large(limit: int, param: str | None = "file") -> InvalidArgument:
    return InvalidArgument(
        f"The file is larger than the limit of {human_size(limit)}",
        reason="PAYLOAD_TOO_LARGE", http_status=413, metadata={"param": param} if param else {},
        details={"field": param or "body", "value": None, "constraint": f"must be at most {limit} bytes"},
    )


def check_purpose(purpose: str) -> str:
    if purpose not in UPLOAD_PURPOSES:
        raise serving_error(f"'{excerpt(purpose, 40)}' is not a supported purpose; use one of "
                            + ", ".join(UPLOAD_PURPOSES), "purpose", "invalid_purpose")
    return purpose


def file_not_found(file_id: str) -> NotFound:
    # OpenAI's error for an unknown (or another user's) file: type not_found_error, 404.
    return NotFound(f"No such File object: {excerpt(file_id, 64)}", reason="NOT_FOUND",
                    metadata={"param": "file_id", "type": "not_found_error"})


def safe_filename(name: str, default: str = "file") -> str:
    """A name for URLs and Content-Disposition: path parts dropped, odd characters replaced."""
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = _UNSAFE_FILENAME.sub("_", name)[:MAX_FILENAME].strip(" .")
    return name or default


def list_limit(limit: int | None, default: int, maximum: int, field: str = "limit") -> int:
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise validation_error(field, limit, f"must be between 1 and {maximum}")
    return limit


def offset_of(offset: int | None) -> int:
    if offset is None:
        return 0
    if offset < 0:
        raise validation_error("offset", offset, "must be at least 0")
    return offset


def parse_uuid(value: str, field: str = "dataset_id") -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise validation_error(field, value, "must be a UUID") from None


def dataset_not_found(dataset_id: str) -> NotFound:
    return NotFound(f"Dataset with ID {dataset_id} not found", reason="NOT_FOUND")


@dataclass
class NewDataset:
    name: str
    description: str
    format: str
    schema: dict[str, Any] | None
    tags: list[str]
    metadata: dict[str, Any]


def new_dataset(name: str, description: str, fmt: str, schema: dict[str, Any] | None, tags: list[str],
                metadata: dict[str, Any]) -> NewDataset:
    """The body of `POST /datasets` checked: its fields, and the schema itself as a JSON Schema."""
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise validation_error("name", name, f"must be between 1 and {MAX_NAME} characters")
    fmt = (fmt or "jsonl").lower()
    if fmt not in DATASET_FORMATS:
        raise validation_error("format", fmt, "must be one of " + ", ".join(DATASET_FORMATS))
    if schema is not None:
        problem = rows.schema_problem(schema)
        if problem:
            raise validation_error("schema", "(schema)", f"must be a valid JSON Schema: {problem}")
    if len(tags) > MAX_TAGS:
        raise validation_error("tags", f"{len(tags)} tags", f"must have at most {MAX_TAGS} items")
    tags = [t for part in tags for t in (s.strip() for s in part.split(",")) if t]
    return NewDataset(name, description, fmt, schema or None, tags, metadata)


def version_label(version: str) -> str:
    version = version.strip()
    if not 1 <= len(version) <= 100:
        raise validation_error("version", version, "must be between 1 and 100 characters")
    return version


def human_size(n: int) -> str:
    """An export's `file_size`: "512B", "48.2KB", "2.4MB" (1 KB = 1024 B)."""
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{int(size)}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    return f"{size:.1f}GB"


def export_format(fmt: str, default: str, allowed: tuple[str, ...] = EXPORT_FORMATS) -> str:
    fmt = (fmt or default).lower()
    if fmt not in allowed:
        raise validation_error("format", fmt, "must be one of " + ", ".join(allowed))
    return fmt


def experiment_ids(ids: list[int], *, allow_empty: bool = False) -> list[int]:
    if not ids and not allow_empty:
        raise validation_error("experiment_ids", [], "must list at least one experiment id")
    if len(ids) > MAX_BATCH_EXPERIMENTS:
        raise validation_error("experiment_ids", f"{len(ids)} ids",
                               f"must list at most {MAX_BATCH_EXPERIMENTS} experiments")
    bad = [i for i in ids if i < 1]
    if bad:
        raise validation_error("experiment_ids", bad[0], "must be positive experiment ids")
    return list(dict.fromkeys(ids))
