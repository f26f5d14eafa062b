"""Generation backends behind one interface: ONNX Runtime in process, NVIDIA Triton, OpenAI-compatible upstreams."""

from __future__ import annotations

from ..models.registry import ModelRecord
from .base import (
    Backend,
    BackendError,
    BackendRequest,
    BackendStatus,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendRequest",
    "BackendStatus",
    "BackendTimeout",
    "BackendUnavailable",
    "ModelNotFound",
    "UpstreamAuthFailed",
    "UpstreamRateLimited",
    "UpstreamRejected",
    "remote_backend",
]


def remote_backend(model: ModelRecord) -> Backend:
    """The backend of a model served elsewhere (`triton` or `openai`); the in-process `onnx` backend is built by
    the service around its engine."""
    if model.backend == "openai":
        from .upstream import UpstreamBackend

        return UpstreamBackend(model)
    if model.backend == "triton":
        from .triton import TritonBackend

        return TritonBackend(model)
    raise ValueError(f"model {model.id!r} has backend {model.backend!r}, which is not a remote backend")
