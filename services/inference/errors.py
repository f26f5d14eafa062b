"""The inference service's domain errors and the one mapping from engine exceptions to them."""

from __future__ import annotations

from llmlab.runtime import DomainError, InvalidArgument, ResourceExhausted, Unavailable

from .engine import ContextLengthExceeded, EngineOverloaded, EngineStopped, InvalidRequest


class ModelNotLoaded(Unavailable):
    """The model is registered but no engine holds it (HTTP 503, code MODEL_NOT_LOADED)."""

    default_reason = "MODEL_NOT_LOADED"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"Requested model '{model}' is not loaded",
            details={"model": model, "hint": f"Please call POST /api/v1/models/{model}/load first"},
        )


def engine_error(exc: Exception) -> DomainError:
    """What a client sees when the engine refuses a request before queuing it."""
    if isinstance(exc, ContextLengthExceeded):
        return InvalidArgument(str(exc), reason="CONTEXT_LENGTH_EXCEEDED", field_violations=[("max_tokens", str(exc))])
    if isinstance(exc, InvalidRequest):
        return InvalidArgument(str(exc), reason="INVALID_REQUEST")
    if isinstance(exc, EngineOverloaded):
        return ResourceExhausted(
            "The model is overloaded; retry shortly", reason="ENGINE_OVERLOADED", metadata={"retry_after": 1}
        )
    if isinstance(exc, EngineStopped):
        return Unavailable("The model is shutting down", reason="ENGINE_STOPPED")
    raise exc
