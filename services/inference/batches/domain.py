"""OpenAI batches, no I/O (docs/batches.md): the create checks, the input file's lines, the output and error lines,
and the batch object as `/v1/batches` shows it."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from llmlab.runtime.errors import excerpt

from ..openai.validation import ProtocolError

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
WINDOWS = {"24h": 24 * 3600}
MAX_LINES = 50_000  # OpenAI's limit of requests per batch
MAX_METADATA = 16
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MAX_REPORTED_ERRORS = 100  # `errors.data` of a batch that failed validation
TERMINAL = ("failed", "completed", "expired", "cancelled")
LIST_DEFAULT, LIST_MAX = 20, 100


def new_batch_id() -> str:
    return f"batch_{uuid.uuid4().hex}"


def line_request_id(batch_id: str, index: int) -> str:
    """The request id of a line's run: the same on every attempt, so the usage ledger (which counts each request id
    once) counts a line re-run after a worker died once, and the output line's `request_id` names it."""
    return f"req_{batch_id.removeprefix('batch_')}_{index}"


def line_id(batch_id: str, index: int) -> str:
    """The output line's `id` (OpenAI: "batch_req_...")."""
    return f"batch_req_{batch_id.removeprefix('batch_')}_{index}"


# -- POST /v1/batches ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSpec:
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str]


def check_create(input_file_id: str, endpoint: str, completion_window: str, metadata: dict[str, str]) -> BatchSpec:
    """The body of `POST /v1/batches`, checked as OpenAI does (400 with `param`)."""
    if not input_file_id:
        raise ProtocolError("Missing required parameter: 'input_file_id'.", "input_file_id",
                            "missing_required_parameter")
    if not endpoint:
        raise ProtocolError("Missing required parameter: 'endpoint'.", "endpoint", "missing_required_parameter")
    if endpoint not in ENDPOINTS:
        raise ProtocolError(
            f"Invalid value for 'endpoint': '{excerpt(endpoint)}' is not supported; use one of "
            + ", ".join(ENDPOINTS) + ".", "endpoint", "invalid_value")
    if not completion_window:
        raise ProtocolError("Missing required parameter: 'completion_window'.", "completion_window",
                            "missing_required_parameter")
    if completion_window not in WINDOWS:
        raise ProtocolError(
            f"Invalid value for 'completion_window': '{excerpt(completion_window)}'. Supported values are: '24h'.",
            "completion_window", "invalid_value")
    if len(metadata) > MAX_METADATA:
        raise ProtocolError(f"Invalid 'metadata': at most {MAX_METADATA} pairs.", "metadata", "invalid_value")
    for k, v in metadata.items():
        if len(k) > MAX_METADATA_KEY or len(v) > MAX_METADATA_VALUE:
            raise ProtocolError(f"Invalid 'metadata': keys are at most {MAX_METADATA_KEY} characters and values "
                                f"at most {MAX_METADATA_VALUE}.", "metadata", "invalid_value")
    return BatchSpec(input_file_id, endpoint, completion_window, dict(metadata))


def wrong_purpose(file_id: str, purpose: str) -> ProtocolError:
    return ProtocolError(f"File {excerpt(file_id)} has purpose '{excerpt(purpose)}'; a batch's input file must have "
                         "purpose 'batch'.", "input_file_id", "invalid_file_purpose")


def file_not_found(file_id: str) -> ProtocolError:
    return ProtocolError(f"No such File object: {excerpt(file_id)}", "input_file_id", "file_not_found", status=404,
                         type="not_found_error")


def batch_not_found(batch_id: str) -> ProtocolError:
    return ProtocolError(f"No batch found with id '{excerpt(batch_id)}'.", "batch_id", "not_found", status=404,
                         type="not_found_error")


def not_cancellable(status: str) -> ProtocolError:
    return ProtocolError(f"Cannot cancel a batch with status '{status}'.", None, "batch_not_cancellable",
                         status=409)


def list_limit(limit: int | None) -> int:
    if limit is None:
        return LIST_DEFAULT
    if not 1 <= limit <= LIST_MAX:
        raise ProtocolError(f"Invalid 'limit': must be between 1 and {LIST_MAX}.", "limit", "invalid_value")
    return limit


# -- the input file ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One non-blank input line: its request body, or why it cannot run (`error`, an OpenAI error object)."""

    index: int
    custom_id: str | None
    body: dict[str, Any] | None
    error: dict[str, Any] | None = None


def _line_error(code: str, message: str, line_no: int) -> dict[str, Any]:
    return {"code": code, "message": message, "param": None, "line": line_no}


def parse_lines(data: bytes, endpoint: str) -> tuple[list[Line], list[dict[str, Any]]]:
    """The file's requests in order, and file-level errors that fail the whole batch (none runnable, too many).

    A line that is not a request (not JSON, no custom_id, a method other than POST, a url other than the batch's
    endpoint, a custom_id seen before) does not run: it is reported in the error file and the rest runs.
    """
    lines: list[Line] = []
    seen: set[str] = set()
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        index = len(lines)
        if index >= MAX_LINES:
            return lines, [_line_error("too_many_requests", f"A batch holds at most {MAX_LINES} requests.",
                                       line_no)]
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            lines.append(Line(index, None, None, _line_error("invalid_json_line", "This line is not valid JSON.",
                                                             line_no)))
            continue
        custom_id = row.get("custom_id") if isinstance(row, dict) else None
        custom_id = custom_id if isinstance(custom_id, str) and custom_id else None
        error = _check_row(row, endpoint, custom_id, seen, line_no)
        if custom_id is not None:
            seen.add(custom_id)
        lines.append(Line(index, custom_id, row["body"] if error is None else None, error))
    if not lines:
        return lines, [_line_error("empty_file", "The input file holds no requests.", None)]  # type: ignore[arg-type]
    if all(line.error is not None for line in lines):
        return lines, [line.error for line in lines[:MAX_REPORTED_ERRORS] if line.error is not None]
    return lines, []


def _check_row(row: Any, endpoint: str, custom_id: str | None, seen: set[str], line_no: int) -> dict[str, Any] | None:
    if not isinstance(row, dict):
        return _line_error("invalid_request", "Each line must be a JSON object.", line_no)
    if custom_id is None:
        return _line_error("missing_custom_id", "Each request needs a non-empty string 'custom_id'.", line_no)
    if custom_id in seen:
        return _line_error("duplicate_custom_id", f"The custom_id '{excerpt(custom_id)}' is used more than once.",
                           line_no)
    if row.get("method") != "POST":
        return _line_error("invalid_method", "The request's 'method' must be POST.", line_no)
    if row.get("url") != endpoint:
        return _line_error("mismatched_endpoint",
                           f"The request's url '{excerpt(str(row.get('url')))}' is not the batch's endpoint "
                           f"'{endpoint}'.", line_no)
    if not isinstance(row.get("body"), dict):
        return _line_error("invalid_body", "The request's 'body' must be a JSON object.", line_no)
    return None


def chunk_of(index: int, chunk_lines: int) -> int:
    return index // chunk_lines


# -- output ------------------------------------------------------------------------------------------------------


def output_line(batch_id: str, index: int, custom_id: str | None, status_code: int, body: dict[str, Any] | None,
                error: dict[str, Any] | None = None) -> dict[str, Any]:
    """A line of the output file (status 200) or the error file (an error status, or `error` when the line never
    ran): `{"id", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}`."""
    response = None
    if error is None:
        response = {"status_code": status_code, "request_id": line_request_id(batch_id, index), "body": body}
    return {"id": line_id(batch_id, index), "custom_id": custom_id, "response": response, "error": error}


def jsonl(records: list[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(r, separators=(",", ":"), ensure_ascii=False).encode() + b"\n" for r in records)


# -- the batch object ----------------------------------------------------------------------------------------------


def _ts(at: datetime | None) -> int | None:
    return int(at.timestamp()) if at is not None else None


def render_batch(row: Any) -> dict[str, Any]:
    """OpenAI's batch object from a `batches` row (repository.BatchRow)."""
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": row.errors,
        "input_file_id": row.input_file_id,
        "completion_window": row.completion_window,
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _ts(row.created_at),
        "in_progress_at": _ts(row.in_progress_at),
        "expires_at": _ts(row.expires_at),
        "finalizing_at": _ts(row.finalizing_at),
        "completed_at": _ts(row.completed_at),
        "failed_at": _ts(row.failed_at),
        "expired_at": _ts(row.expired_at),
        "cancelling_at": _ts(row.cancelling_at),
        "cancelled_at": _ts(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.metadata,
    }
