"""Per-request context (request id, principal) carried in contextvars across awaits and into logs."""

from __future__ import annotations

import contextvars
import uuid

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmlab_request_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmlab_principal", default="")


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def current_request_id() -> str:
    """The request id of the RPC being served (the gateway's x-request-id), or "" outside any request."""
    return request_id_var.get()
