"""Line-by-line checks of uploaded files as they stream in: OpenAI batch and fine-tune JSONL, dataset rows.

Each check sees one line at a time, so a file of any size is validated in memory bounded by its longest line.
Errors keep the first few line numbers with a short reason, plus a count of all failing lines.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
from jsonschema.exceptions import SchemaError

from llmlab.runtime.errors import excerpt

MAX_LINE_BYTES = 16 * 1024 * 1024
MAX_REPORTED = 10
MAX_JSON_DOCUMENT_BYTES = 64 * 1024 * 1024

# (parsed line) -> None when fine, else why not
RowCheck = Callable[[Any], str | None]


class LineChecker:
    """Splits a byte stream into lines and checks each non-blank line as JSON with `check`."""

    def __init__(self, check: RowCheck, what: str = "line") -> None:
        self._check = check
        self._what = what
        self._pending = bytearray()
        self.line_no = 0
        self.rows = 0
        self.failures: list[tuple[int, str]] = []
        self.failed = 0
        self.too_long = False

    def feed(self, chunk: bytes) -> None:
        self._pending += chunk
        start = 0
        while (end := self._pending.find(b"\n", start)) != -1:
            self._line(bytes(self._pending[start:end]))
            start = end + 1
        del self._pending[:start]
        if len(self._pending) > MAX_LINE_BYTES:
            self.too_long = True
            self._fail(self.line_no + 1, f"longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB")
            self._pending.clear()

    def finish(self) -> None:
        if self._pending:
            self._line(bytes(self._pending))
            self._pending.clear()

    def _fail(self, line_no: int, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append((line_no, reason))

    def _line(self, raw: bytes) -> None:
        self.line_no += 1
        if self.too_long:  # the rest of an over-long line
            self.too_long = False
            return
        if not raw.strip():
            return
        self.rows += 1
        try:
            value = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            self._fail(self.line_no, "not UTF-8")
            return
        except json.JSONDecodeError as exc:
            self._fail(self.line_no, f"not valid JSON ({exc.msg})")
            return
        reason = self._check(value)
        if reason:
            self._fail(self.line_no, reason)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        """'line 2: missing custom_id; line 5: not valid JSON (...)' and how many more."""
        text = "; ".join(f"{self._what} {n}: {reason}" for n, reason in self.failures)
        if self.failed > len(self.failures):
            text += f"; and {self.failed - len(self.failures)} more"
        return text

    def numbers(self) -> list[int]:
        return [n for n, _ in self.failures]


def _batch_line(row: Any) -> str | None:
    """OpenAI batch input line: custom_id, method, url, body (https://platform.openai.com/docs/api-reference/batch)."""
    if not isinstance(row, dict):
        return "must be a JSON object"
    missing = [k for k in ("custom_id", "method", "url", "body") if k not in row]
    if missing:
        return "missing " + ", ".join(missing)
    if not isinstance(row["custom_id"], str) or not row["custom_id"]:
        return "custom_id must be a non-empty string"
    if row["method"] != "POST":
        return "method must be POST"
    if not isinstance(row["url"], str) or not row["url"].startswith("/v1/"):
        return "url must be an endpoint path such as /v1/chat/completions"
    if not isinstance(row["body"], dict):
        return "body must be a JSON object"
    return None


def _fine_tune_line(row: Any) -> str | None:
    """Fine-tuning line: chat `messages`, or the legacy `prompt` and `completion` strings."""
    if not isinstance(row, dict):
        return "must be a JSON object"
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
                return f"messages[{i}] needs a role and content"
        return None
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return None
    return "needs messages, or prompt and completion"


# Purposes whose uploads are JSONL checked line by line; the others are stored as they come.
PURPOSE_CHECKS: dict[str, RowCheck] = {"batch": _batch_line, "fine-tune": _fine_tune_line}


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why `schema` is not a valid JSON Schema (Draft 2020-12), or None."""
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        return f"{excerpt(exc.message, 200)} at {where}"
    return None


def schema_check(schema: dict[str, Any] | None) -> RowCheck:
    """A row check against a dataset's JSON Schema; without a schema every JSON value is a row."""
    if not schema:
        return lambda row: None
    validator = jsonschema.Draft202012Validator(schema)

    def check(row: Any) -> str | None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(row))
        if error is None:
            return None
        where = "/".join(str(p) for p in error.absolute_path)
        return excerpt(f"{where}: {error.message}" if where else error.message, 200)

    return check


class JsonDocumentChecker:
    """A `json` dataset: one JSON array of rows, parsed once complete (bounded by MAX_JSON_DOCUMENT_BYTES)."""

    def __init__(self, check: RowCheck) -> None:
        self._check = check
        self._data = bytearray()
        self.rows = 0
        self.failures: list[tuple[int, str]] = []
        self.failed = 0
        self.too_large = False

    def feed(self, chunk: bytes) -> None:
        if len(self._data) + len(chunk) > MAX_JSON_DOCUMENT_BYTES:
            self.too_large = True
            self._data.clear()
            return
        self._data += chunk

    def finish(self) -> None:
        if self.too_large:
            self._fail(0, f"a json dataset is at most {MAX_JSON_DOCUMENT_BYTES // (1024 * 1024)} MiB; use jsonl")
            return
        try:
            value = json.loads(bytes(self._data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._fail(0, f"not valid JSON ({getattr(exc, 'msg', 'not UTF-8')})")
            return
        finally:
            self._data.clear()
        if not isinstance(value, list):
            self._fail(0, "must be a JSON array of rows")
            return
        self.rows = len(value)
        for i, row in enumerate(value, start=1):
            reason = self._check(row)
            if reason:
                self._fail(i, reason)

    def _fail(self, n: int, reason: str) -> None:
        self.failed += 1
        if len(self.failures) < MAX_REPORTED:
            self.failures.append((n, reason))

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def summary(self) -> str:
        text = "; ".join(f"row {n}: {r}" if n else r for n, r in self.failures)
        if self.failed > len(self.failures):
            text += f"; and {self.failed - len(self.failures)} more"
        return text

    def numbers(self) -> list[int]:
        return [n for n, _ in self.failures if n]


class CsvCounter:
    """A `csv` dataset (RFC 4180): counts records after the header; a quoted field may span lines."""

    def __init__(self) -> None:
        self._pending = bytearray()
        self._quotes = 0
        self._records = 0
        self.failures: list[tuple[int, str]] = []
        self.failed = 0

    def feed(self, chunk: bytes) -> None:
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._quotes += chunk.count(b'"', start, end + 1)
            if self._quotes % 2 == 0:  # doubled quotes keep the parity: the record ends here
                self._records += 1
                self._quotes = 0
            start = end + 1
        self._quotes += chunk.count(b'"', start)
        self._pending = bytearray(chunk[start:])

    def finish(self) -> None:
        if self._pending.strip():
            self._records += 1

    @property
    def rows(self) -> int:
        return max(0, self._records - 1)

    ok = True

    def summary(self) -> str:
        return ""

    def numbers(self) -> list[int]:
        return []
