"""The one interface every generation backend implements, and the errors backends raise."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import grpc

from llmlab.runtime import DomainError, InvalidArgument, ResourceExhausted, Unavailable

from ..domain import GenerationEvent, SamplingParams
from ..models.registry import ModelNotFound, ModelRecord

__all__ = [
    "Backend",
    "BackendError",
    "BackendRequest",
    "BackendStatus",
    "BackendTimeout",
    "BackendUnavailable",
    "ModelLimits",
    "ModelNotFound",
    "UpstreamAuthFailed",
    "UpstreamRateLimited",
    "UpstreamRejected",
]


@dataclass
class BackendRequest:
    """One sequence to generate: either a raw `prompt` or OpenAI chat `messages` (list of dicts), never both.

    `prompt_token_ids` is the prompt already tokenized by this backend's `tokenize` (the servicer counted it to
    size max_tokens; the backend need not encode it again). `tools`, `tool_choice` and `response_format` are
    OpenAI's JSON values, for backends with `native_chat` (the upstream applies them); a backend that renders
    prompts itself gets them already written into the prompt by the servicer's plan.

    `n > 1` is fanned out by the caller, as for the engine (GenerationRequest)."""

    request_id: str
    model: ModelRecord
    params: SamplingParams = field(default_factory=SamplingParams)
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    prompt_token_ids: list[int] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("a BackendRequest carries exactly one of prompt and messages")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass
class BackendStatus:
    """What a backend can say about its model right now (health, /api/v1/models `loaded`)."""

    backend: str  # "onnx" | "triton" | "openai"
    model: str  # registry slug
    ready: bool
    detail: str = ""  # why not ready, or what answered
    latency_ms: float | None = None  # of the check, when it made a call


@dataclass(frozen=True)
class ModelLimits:
    """What a backend's model holds: its context, the longest completion it writes, its vocabulary (None: unknown
    here, the backend or its upstream enforces it)."""

    context_length: int
    max_output_tokens: int | None = None
    vocab_size: int | None = None


@runtime_checkable
class Backend(Protocol):
    """A way to generate with one registered model.

    `generate` is an async generator: it yields GenerationEvents as text arrives; the last one has
    `finish_reason`, `usage` (when the backend reports it) and the timings. A failure before any text is raised
    as a BackendError (or ModelNotFound); a failure after text has been yielded ends the stream with an event
    whose finish_reason is "error" and `error` a client-safe message. Closing the generator early (client gone)
    cancels the work upstream."""

    kind: str  # "onnx" | "triton" | "openai"
    # True: chat goes to the backend as OpenAI `messages` with tools and response_format (an OpenAI-compatible
    # upstream applies them). False: the servicer renders the prompt with `render_chat` (tools and JSON mode
    # written into it by the plan) and sends `prompt`.
    native_chat: bool

    def limits(self) -> ModelLimits: ...

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str: ...

    def tokenize(self, text: str) -> list[int] | None:
        """The prompt's token ids, or None when only the backend's server can count them."""
        ...

    def detokenize(self, token_ids: list[int]) -> str | None:
        """The text of token ids, or None when this backend cannot say (then token-id prompts are refused)."""
        ...

    def generate(self, request: BackendRequest) -> AsyncIterator[GenerationEvent]: ...

    async def status(self) -> BackendStatus: ...

    async def close(self) -> None: ...


class BackendError(DomainError):
    """A backend failed; subclasses say how, and fix the status the client sees."""


class BackendUnavailable(BackendError, Unavailable):
    """The backend cannot be reached or answered with a server error (HTTP 503)."""

    default_reason = "BACKEND_UNAVAILABLE"


class BackendTimeout(BackendError):
    """The backend did not answer in time (HTTP 504)."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "BACKEND_TIMEOUT"


class UpstreamAuthFailed(BackendError):
    """The upstream refused our credentials (its 401/403, or the key's env var is unset). The client's own
    credentials are fine, so it is not a 401 to them: a 502, the gateway's fault."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UPSTREAM_AUTH_FAILED"
    default_http_status = 502


class UpstreamRateLimited(BackendError, ResourceExhausted):
    """The upstream answered 429 (HTTP 429)."""

    default_reason = "UPSTREAM_RATE_LIMITED"


class UpstreamRejected(BackendError, InvalidArgument):
    """The upstream judged the request invalid (its 400/422); its message is passed on (HTTP 400)."""

    default_reason = "UPSTREAM_BAD_REQUEST"
