"""OpenAI's /v1 request protocol as typed requests (like vLLM's `entrypoints/openai/protocol.py`, dataclasses
instead of pydantic). parsing.py builds them from a body; nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .tools import FunctionDef, ToolCall

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

ROLES: tuple[str, ...] = ("system", "assistant", "user", "function", "tool", "developer")
TEXT_PART = "text"
USER_PART_TYPES = ("text", "image_url", "input_audio", "file")
ASSISTANT_PART_TYPES = ("text", "refusal")


@dataclass
class ChatMessage:
    """One message of `messages`. Text parts are joined into `content`; other parts are kept as (index, type)."""

    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    function_call: ToolCall | None = None  # legacy assistant `function_call` (id "")
    media_parts: list[tuple[int, str]] = field(default_factory=list)  # (part index, type) of non-text user parts


@dataclass(frozen=True)
class ToolChoice:
    """`tool_choice` / legacy `function_call`: "none", "auto", "required", or "named" with `name`."""

    mode: Literal["none", "auto", "required", "named"]
    name: str | None = None


@dataclass(frozen=True)
class ResponseFormat:
    """`response_format`: text, json_object or json_schema (name, schema, strict)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


@dataclass(kw_only=True)
class CommonRequest:
    """Fields both endpoints share. None means "not given" (the OpenAI default applies)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    user: str | None = None
    # vLLM's extras
    top_k: int | None = None
    repetition_penalty: float | None = None
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)


@dataclass(kw_only=True)
class ChatCompletionRequest(CommonRequest):
    """A validated `POST /v1/chat/completions` body."""

    messages: list[ChatMessage]
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[FunctionDef] = field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    legacy_functions: bool = False  # `functions`/`function_call` were used (answers come back as `function_call`)
    response_format: ResponseFormat = field(default_factory=ResponseFormat)


@dataclass(frozen=True)
class PromptInput:
    """One prompt of `/v1/completions`: text, or token ids (then the servicer decodes them for echo)."""

    text: str | None = None
    token_ids: list[int] | None = None


@dataclass(kw_only=True)
class CompletionRequest(CommonRequest):
    """A validated `POST /v1/completions` body."""

    prompts: list[PromptInput]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None

