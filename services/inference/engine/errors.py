"""Errors the engine raises before a request is queued; servicers map them to statuses."""

from __future__ import annotations


class EngineError(Exception):
    """Base of the engine's errors."""


class InvalidRequest(EngineError, ValueError):
    """A request the engine cannot run as asked (bad sampling parameters, empty prompt, unknown token ids)."""


class ContextLengthExceeded(InvalidRequest):
    """The prompt plus max_tokens does not fit the model's context window."""

    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context_length = context_length
        super().__init__(
            f"This model's maximum context length is {context_length} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the completion). "
            f"Please reduce the prompt or max_tokens."
        )


class EngineOverloaded(EngineError):
    """The engine's wait queue is full; the caller should retry later."""

    def __init__(self, queued: int, max_queue: int) -> None:
        self.queued = queued
        self.max_queue = max_queue
        super().__init__(f"engine overloaded: {queued} requests already waiting (max_queue={max_queue}); retry later")


class EngineStopped(EngineError):
    """The engine is not running (not started yet, or stopping)."""
