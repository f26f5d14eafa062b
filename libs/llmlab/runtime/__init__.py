"""llmlab's shared service runtime: settings, logs, tracing, metrics, Postgres, Redis, errors, gRPC bootstrap."""

from .context import current_request_id
from .errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    validation_error,
)
from .server import ServiceApp, ServiceSpec, main, serve
from .settings import DEFAULT_PORTS, SERVICES, VERSION, ServiceSettings, SettingsError, load_settings

__all__ = [
    "DEFAULT_PORTS",
    "SERVICES",
    "VERSION",
    "AlreadyExists",
    "DomainError",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServiceApp",
    "ServiceSettings",
    "ServiceSpec",
    "SettingsError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "current_request_id",
    "load_settings",
    "main",
    "serve",
    "validation_error",
]
