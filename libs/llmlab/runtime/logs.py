"""structlog JSON logs with request_id and trace_id on every line; secrets are redacted before rendering."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from opentelemetry import trace

from .context import principal_var, request_id_var

_SECRET_KEYS = ("password", "secret", "token", "authorization", "api_key", "apikey", "cookie", "x-api-key")
# Credentials that end up inside a value (an error text, a header list): API keys, JWTs, bearer credentials.
_SECRET_VALUES = re.compile(
    r"\bsk-[A-Za-z0-9_-]{8,}|\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*|(?i:bearer)\s+\S+"
)


def _add_request_context(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    rid = request_id_var.get()
    if rid and "request_id" not in event:
        event["request_id"] = rid
    principal = principal_var.get()
    if principal and "principal" not in event:
        event["principal"] = principal
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.setdefault("trace_id", format(ctx.trace_id, "032x"))
        event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


def _redact(value: Any, key: str = "") -> Any:
    if key and any(s in key.lower() for s in _SECRET_KEYS):
        return "[redacted]"
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUES.sub("[redacted]", value)
    return value


def _redact_secrets(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: (_redact(v) if k == "event" else _redact(v, k)) for k, v in event.items()}


def configure_logging(service: str, level: str = "info", fmt: str = "json") -> structlog.stdlib.BoundLogger:
    """Configure structlog (and stdlib logging, for library messages) once per process; return a bound logger."""
    lvl = getattr(logging, level.upper())
    renderer: Any = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_request_context,
        _redact_secrets,
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=renderer,
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(lvl, logging.INFO))
    return structlog.get_logger().bind(service=service)
