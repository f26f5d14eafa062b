"""Domain errors and their one mapping to gRPC status with google.rpc details (rendered per family by Envoy)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "llmlab"

# Bounds on what an error may quote of its input. Errors travel as gRPC trailers (grpc-message and
# grpc-status-details-bin), which Envoy caps with the rest of the response headers: a trailer past the cap (seen:
# a 60k-character `name` quoted whole) reset the upstream HTTP/2 connection and failed unrelated requests that
# shared it. So every error is bounded here, once, whatever a caller puts into it.
EXCERPT_CHARS = 64  # one quoted value: enough to recognise it
MESSAGE_CHARS = 300  # a message, a constraint, a metadata value
MAX_ITEMS = 20  # members of a list or object quoted in details
MAX_DEPTH = 4
MAX_STATUS_BYTES = 4096  # the serialized google.rpc.Status; past it the details are dropped, the message kept

# gRPC code -> HTTP status, as Envoy's convert_grpc_status maps them (used for metrics labels).
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` itself when short, else its start and its length: "aaaa… (60000 characters)".

    Text at most a suffix longer than ``limit`` is kept whole, so an excerpt (or a caller's own short rendering,
    such as code points) is never cut again.
    """
    if len(text) <= limit + 32:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def bounded(value: Any, limit: int = EXCERPT_CHARS, depth: int = 0) -> Any:
    """A JSON-like value cut down for quoting in an error: strings of at most ``limit`` characters, few items,
    shallow nesting."""
    if isinstance(value, str):
        return excerpt(value, limit)
    if isinstance(value, bool | int | float) or value is None:
        return value
    if depth >= MAX_DEPTH:
        return "…"
    if isinstance(value, Mapping):
        items = list(value.items())
        out = {excerpt(str(k)): bounded(v, limit, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["…"] = f"{len(items) - MAX_ITEMS} more"
        return out
    if isinstance(value, list | tuple):
        out_list = [bounded(v, limit, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out_list.append(f"… {len(value) - MAX_ITEMS} more")
        return out_list
    if isinstance(value, bytes):
        return f"({len(value)} bytes)"
    return excerpt(str(value), limit)


class DomainError(Exception):
    """An expected failure with a client-safe message. Subclasses fix the gRPC code and default reason."""

    grpc_code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL_ERROR"
    default_http_status: ClassVar[int | None] = None

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        field_violations: Iterable[tuple[str, str]] = (),
        http_status: int | None = None,
    ) -> None:
        message = excerpt(message, MESSAGE_CHARS)
        super().__init__(message)
        self.message = message
        # An explicit empty reason is kept: some families render a missing code as null (OpenAI's `code`).
        self.reason = self.default_reason if reason is None else excerpt(reason)
        # Our own wording (a constraint) may be a sentence; a quoted input value is cut shorter where it is quoted.
        self.details = bounded(dict(details), MESSAGE_CHARS) if details is not None else None
        meta_items = list((metadata or {}).items())[:MAX_ITEMS]
        self.metadata = {excerpt(k): excerpt(str(v), MESSAGE_CHARS) for k, v in meta_items}
        self.field_violations = [(excerpt(f, MESSAGE_CHARS), excerpt(d, MESSAGE_CHARS))
                                 for f, d in list(field_violations)[:MAX_ITEMS]]
        self.http_status = http_status or self.default_http_status

    @property
    def status_http(self) -> int:
        return self.http_status or HTTP_STATUS[self.grpc_code]

    def to_status(self) -> status_pb2.Status:
        """google.rpc.Status with ErrorInfo (+ Struct details, + BadRequest) per protos/README.md "Errors"."""
        code = getattr(code_pb2, self.grpc_code.name)
        st = status_pb2.Status(code=code, message=self.message)
        meta = dict(self.metadata)
        if self.http_status:
            meta["http_status"] = str(self.http_status)
        st.details.add().Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=meta))
        if self.details is not None:
            details = struct_pb2.Struct()
            details.update(self.details)
            st.details.add().Pack(details)
        if self.field_violations:
            st.details.add().Pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in self.field_violations
                    ]
                )
            )
        return st

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        raw = self.to_status().SerializeToString()
        if len(raw) > MAX_STATUS_BYTES:  # many long field names: keep the reason, drop the rest
            st = status_pb2.Status(code=getattr(code_pb2, self.grpc_code.name), message=self.message)
            meta = {"http_status": str(self.http_status)} if self.http_status else {}
            st.details.add().Pack(error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=meta))
            raw = st.SerializeToString()
        return (("grpc-status-details-bin", raw),)


class InvalidArgument(DomainError):
    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "VALIDATION_ERROR"


class NotFound(DomainError):
    grpc_code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(DomainError):
    grpc_code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "CONFLICT"


class FailedPrecondition(DomainError):
    """A semantically impossible request: HTTP 422 (`unprocessable_entity`, docs/api.md "research")."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "UNPROCESSABLE_ENTITY"
    default_http_status = 422


class Unauthenticated(DomainError):
    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHORIZED"


class PermissionDenied(DomainError):
    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "FORBIDDEN"


class ResourceExhausted(DomainError):
    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RATE_LIMIT_EXCEEDED"


class Unavailable(DomainError):
    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_reason = "SERVICE_UNAVAILABLE"


class Internal(DomainError):
    grpc_code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL_ERROR"


def validation_error(field: str, value: Any, constraint: str, message: str | None = None) -> InvalidArgument:
    """The validation error of every family: details {field, value, constraint} (docs/api.md "lab") plus a
    BadRequest violation."""
    return InvalidArgument(
        message or "Validation failed",
        details={"field": field, "value": bounded(value), "constraint": constraint},
        field_violations=[(field, constraint)],
    )


def serving_validation_error(field: str, value: Any, constraint: str) -> InvalidArgument:
    """validation_error for the serving family (`/v1`), whose body shows only `message` and `param`: the message
    is a sentence that carries the constraint, "`field` constraint"."""
    return validation_error(field, value, constraint, message=f"`{field}` {constraint}")


INTERNAL_MESSAGE = "An unexpected error occurred. Please try again later."


class Unimplemented(DomainError):
    """An endpoint whose issue has not landed yet: HTTP 501 in the family's error shape."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"
