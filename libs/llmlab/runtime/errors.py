"""Domain errors and their one mapping to gRPC status with google.rpc details (rendered per family by Envoy)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import grpc
from google.protobuf import struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

DOMAIN = "llmlab"

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
        super().__init__(message)
        self.message = message
        # An explicit empty reason is kept: some families render a missing code as null (OpenAI's `code`).
        self.reason = self.default_reason if reason is None else reason
        self.details = dict(details) if details is not None else None
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}
        self.field_violations = list(field_violations)
        self.http_status = http_status or self.default_http_status

    @property
    def status_http(self) -> int:
        return self.http_status or HTTP_STATUS[self.grpc_code]

    def to_status(self) -> status_pb2.Status:
        """google.rpc.Status with ErrorInfo (+ Struct details, + BadRequest) per protos/README.md §Errors."""
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
        return (("grpc-status-details-bin", self.to_status().SerializeToString()),)


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
    """A semantically impossible request: HTTP 422 (seed 000/001 "Unprocessable Entity")."""

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
    """The seed 000 validation error: details {field, value, constraint} plus a BadRequest violation."""
    return InvalidArgument(
        message or "Validation failed",
        details={"field": field, "value": value, "constraint": constraint},
        field_violations=[(field, constraint)],
    )


INTERNAL_MESSAGE = "An unexpected error occurred. Please try again later."


class Unimplemented(DomainError):
    """An endpoint whose issue has not landed yet: HTTP 501 in the family's error shape."""

    grpc_code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"
