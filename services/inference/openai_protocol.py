"""OpenAI's /v1 request protocol: bodies parsed and validated as OpenAI does, turned into a generation plan.

Typed requests live here (like vLLM's `entrypoints/openai/protocol.py`, with dataclasses and explicit checks instead
of pydantic); response rendering is in `openai_render`, prompt-side function calling in `openai_tools`. Everything
is pure: no I/O, no engine, no gRPC. Flow for the servicer:

    req = parse_chat_request(http_body.data)             # ProtocolError -> 400 in OpenAI's error shape
    plan = build_chat_plan(req, chat_template, limits)   # prompt text, n, per-choice sampling, output processing
    ids = tokenize(plan.prompt)
    params = plan.sampling_params(len(ids))              # n SamplingParams; max_tokens checked against the context

`chat_template` is the served model's own template, e.g. `lambda turns, gen: tokenizer.render_chat(turns,
add_generation_prompt=gen)`; `chatml` below is the same format for tests and ChatML models without one.

Error messages, `param` and `code` follow the strings the OpenAI API returns ("Invalid 'temperature': decimal above
maximum value. Expected a value <= 2, but got 3 instead.", `decimal_above_max_value`). Unknown fields are ignored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from .openai_tools import (
    FUNCTION_NAME,
    TOOL_CALL_CLOSE,
    FunctionDef,
    JsonOutput,
    OutputProcessor,
    PlainOutput,
    ToolCall,
    ToolCallOutput,
    ToolSpec,
    assistant_prefix,
    format_tool_calls,
    format_tool_response,
    json_mode_instruction,
    tools_system_prompt,
)
from .types import SamplingParams

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4
MAX_TOOLS = 128
OPENAI_MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
MAX_PROMPTS = 2048


class ProtocolError(Exception):
    """A request OpenAI would refuse. The servicer turns it into `{"error": {message, type, param, code}}` with
    `status` (the gateway's serving-family error body reads `param` and `code` from the domain error)."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status
        self.type = type

    def body(self) -> dict[str, Any]:
        """OpenAI's error object (also the payload of an in-band error frame after a stream has started)."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def __repr__(self) -> str:
        return f"ProtocolError({self.message!r}, param={self.param!r}, code={self.code!r}, status={self.status})"


def model_not_found(model: str) -> ProtocolError:
    """OpenAI's 404 for an unknown model id (raised by the servicer after a registry lookup)."""
    return ProtocolError(
        f"The model `{model}` does not exist or you do not have access to it.", None, "model_not_found", status=404
    )


# ---------------------------------------------------------------------------------------------------------------
# JSON and typed field access with OpenAI's messages

MALFORMED_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library "
    "correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def load_json_body(data: bytes | str) -> dict[str, Any]:
    """The request body as a JSON object; malformed JSON (NaN and Infinity included) is a 400."""
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(MALFORMED_JSON) from None
    if not isinstance(value, dict):
        raise ProtocolError(
            f"Invalid type for request body: expected an object, but got {_kind(value)} instead.", code="invalid_type"
        )
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _join_values(values: Sequence[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def invalid_type(param: str, expected: str, value: Any) -> ProtocolError:
    return ProtocolError(
        f"Invalid type for '{param}': expected {expected}, but got {_kind(value)} instead.", param, "invalid_type"
    )


def missing(param: str) -> ProtocolError:
    return ProtocolError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")


def invalid_value(param: str, value: Any, supported: Sequence[str]) -> ProtocolError:
    return ProtocolError(
        f"Invalid value: '{value}'. Supported values are: {_join_values(supported)}.", param, "invalid_value"
    )


def _is_int(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


class _Obj:
    """Typed reads from one JSON object of the request; `path` prefixes the `param` of every error."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def param(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def _present(self, key: str, required: bool) -> Any:
        value = self.data.get(key)
        if value is None and required:
            raise missing(self.param(key))
        return value

    def string(
        self, key: str, *, required: bool = False, enum: Sequence[str] | None = None, max_len: int | None = None
    ) -> str | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, str):
            raise invalid_type(self.param(key), "a string", value)
        if enum is not None and value not in enum:
            raise invalid_value(self.param(key), value, enum)
        if max_len is not None and len(value) > max_len:
            raise ProtocolError(
                f"Invalid '{self.param(key)}': string too long. Expected a string with maximum length {max_len}, "
                f"but got a string with length {len(value)} instead.",
                self.param(key),
                "string_above_max_length",
            )
        return value

    def boolean(self, key: str) -> bool | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise invalid_type(self.param(key), "a boolean", value)
        return value

    def integer(self, key: str, *, lo: int | None = None, hi: int | None = None, required: bool = False) -> int | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not _is_int(value):
            raise invalid_type(self.param(key), "an integer", value)
        value = int(value)
        _check_range(self.param(key), value, lo, hi, "integer")
        return value

    def number(
        self, key: str, *, lo: float | None = None, hi: float | None = None, lo_exclusive: bool = False
    ) -> float | None:
        value = self.data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_type(self.param(key), "a decimal", value)
        if lo_exclusive and lo is not None and value <= lo:
            raise ProtocolError(
                f"Invalid '{self.param(key)}': decimal below minimum value. Expected a value > {_bound(lo)}, "
                f"but got {_bound(value)} instead.",
                self.param(key),
                "decimal_below_min_value",
            )
        _check_range(self.param(key), value, None if lo_exclusive else lo, hi, "decimal")
        return float(value)

    def obj(self, key: str, *, required: bool = False) -> _Obj | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid_type(self.param(key), "an object", value)
        return _Obj(value, self.param(key))

    def array(self, key: str, *, required: bool = False, min_len: int = 0, max_len: int | None = None) -> list | None:
        value = self._present(key, required)
        if value is None:
            return None
        if not isinstance(value, list):
            raise invalid_type(self.param(key), "an array", value)
        _check_length(self.param(key), value, min_len, max_len)
        return value


def _bound(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def _check_range(param: str, value: float, lo: float | None, hi: float | None, kind: str) -> None:
    if lo is not None and value < lo:
        raise ProtocolError(
            f"Invalid '{param}': {kind} below minimum value. Expected a value >= {_bound(lo)}, "
            f"but got {_given(value)} instead.",
            param,
            f"{kind}_below_min_value",
        )
    if hi is not None and value > hi:
        raise ProtocolError(
            f"Invalid '{param}': {kind} above maximum value. Expected a value <= {_bound(hi)}, "
            f"but got {_given(value)} instead.",
            param,
            f"{kind}_above_max_value",
        )


def _given(value: float) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _check_length(param: str, value: list, min_len: int, max_len: int | None) -> None:
    if min_len and not value:
        raise ProtocolError(
            f"Invalid '{param}': empty array. Expected an array with minimum length {min_len}, "
            "but got an empty array instead.",
            param,
            "empty_array",
        )
    if len(value) < min_len:
        raise ProtocolError(
            f"Invalid '{param}': array too short. Expected an array with minimum length {min_len}, "
            f"but got an array with length {len(value)} instead.",
            param,
            "array_below_min_length",
        )
    if max_len is not None and len(value) > max_len:
        raise ProtocolError(
            f"Invalid '{param}': array too long. Expected an array with maximum length {max_len}, "
            f"but got an array with length {len(value)} instead.",
            param,
            "array_above_max_length",
        )


def _item(arr_param: str, i: int) -> str:
    return f"{arr_param}[{i}]"


def _check_name(param: str, name: str) -> None:
    if not FUNCTION_NAME.match(name):
        raise ProtocolError(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]+$'.",
            param,
            "invalid_value",
        )
    if len(name) > 64:
        raise ProtocolError(
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )


# ---------------------------------------------------------------------------------------------------------------
# Typed requests


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
class _CommonRequest:
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
class ChatCompletionRequest(_CommonRequest):
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
class CompletionRequest(_CommonRequest):
    """A validated `POST /v1/completions` body."""

    prompts: list[PromptInput]
    logprobs: int | None = None
    echo: bool = False
    best_of: int | None = None


def _parse_common(body: _Obj, *, chat: bool) -> dict[str, Any]:
    model = body.get("model")
    if model is None or model == "":
        raise ProtocolError("you must provide a model parameter")
    if not isinstance(model, str):
        raise invalid_type("model", "a string", model)

    out: dict[str, Any] = {"model": model}
    max_tokens = body.integer("max_tokens", lo=1 if chat else 0)
    if chat:
        max_completion = body.integer("max_completion_tokens", lo=1)
        if max_tokens is not None and max_completion is not None:
            raise ProtocolError(
                "Setting 'max_tokens' and 'max_completion_tokens' at the same time is not supported.",
                "max_tokens",
                "invalid_value",
            )
        max_tokens = max_completion if max_completion is not None else max_tokens
    out["max_tokens"] = max_tokens
    out["temperature"] = body.number("temperature", lo=0, hi=2)
    out["top_p"] = body.number("top_p", lo=0, hi=1)
    out["n"] = body.integer("n", lo=1, hi=OPENAI_MAX_N) or 1
    out["stop"] = _parse_stop(body)
    out["seed"] = body.integer("seed", lo=INT64_MIN, hi=INT64_MAX)
    out["presence_penalty"] = body.number("presence_penalty", lo=-2, hi=2)
    out["frequency_penalty"] = body.number("frequency_penalty", lo=-2, hi=2)
    out["logit_bias"] = _parse_logit_bias(body)
    stream = bool(body.boolean("stream"))
    out["stream"] = stream
    options = body.obj("stream_options")
    if options is not None and not stream:
        raise ProtocolError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options",
            "invalid_value",
        )
    out["include_usage"] = bool(options.boolean("include_usage")) if options is not None else False
    out["user"] = body.string("user")

    top_k = body.integer("top_k", lo=-1)
    out["top_k"] = None if top_k in (None, -1, 0) else top_k
    out["repetition_penalty"] = body.number("repetition_penalty", lo=0, lo_exclusive=True)
    out["min_tokens"] = body.integer("min_tokens", lo=0) or 0
    if max_tokens is not None and out["min_tokens"] > max_tokens:
        raise ProtocolError(
            f"Invalid 'min_tokens': integer above maximum value. Expected a value <= {max_tokens} (max_tokens), "
            f"but got {out['min_tokens']} instead.",
            "min_tokens",
            "integer_above_max_value",
        )
    out["ignore_eos"] = bool(body.boolean("ignore_eos"))
    ids = body.array("stop_token_ids") or []
    for i, tok in enumerate(ids):
        if not _is_int(tok):
            raise invalid_type(_item("stop_token_ids", i), "an integer", tok)
        _check_range(_item("stop_token_ids", i), int(tok), 0, None, "integer")
    out["stop_token_ids"] = [int(t) for t in ids]
    return out


def _parse_stop(body: _Obj) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise invalid_type("stop", "one of a string or array of strings", value)
    _check_length("stop", value, 0, MAX_STOP_SEQUENCES)
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise invalid_type(_item("stop", i), "a string", s)
    return [s for s in value if s]


def _parse_logit_bias(body: _Obj) -> dict[int, float]:
    bias = body.obj("logit_bias")
    if bias is None:
        return {}
    out: dict[int, float] = {}
    for key, value in bias.data.items():
        if not re.fullmatch(r"\d{1,18}", key):
            raise ProtocolError(
                f"Invalid key in 'logit_bias': {key}. You should only be submitting non-negative integers.",
                "logit_bias",
                "invalid_value",
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_type(f"logit_bias.{key}", "a decimal", value)
        if not -100 <= value <= 100:
            raise ProtocolError(
                f"Invalid value for 'logit_bias': bias must be between -100 and 100, but got {_given(value)} "
                f"for token {key}.",
                "logit_bias",
                "invalid_value",
            )
        out[int(key)] = float(value)
    return out


def _as_body(body: bytes | str | Mapping[str, Any]) -> _Obj:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        return _Obj(load_json_body(bytes(body) if not isinstance(body, str) else body))
    return _Obj(body)


# ---------------------------------------------------------------------------------------------------------------
# Chat


def parse_chat_request(body: bytes | str | Mapping[str, Any]) -> ChatCompletionRequest:
    """Validate a `/v1/chat/completions` body (raw bytes or an already decoded object)."""
    b = _as_body(body)
    common = _parse_common(b, chat=True)
    messages = _parse_messages(b)

    logprobs = bool(b.boolean("logprobs"))
    top_logprobs = b.integer("top_logprobs", lo=0, hi=MAX_TOP_LOGPROBS)
    if top_logprobs and not logprobs:
        raise ProtocolError(
            "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is used.",
            "top_logprobs",
            "invalid_value",
        )

    tools, tool_choice, legacy = _parse_tools(b)
    parallel = b.boolean("parallel_tool_calls")
    if parallel is not None and not tools:
        raise ProtocolError(
            "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when 'tools' are "
            "specified.",
            "parallel_tool_calls",
        )
    return ChatCompletionRequest(
        **common,
        messages=messages,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        tools=tools,
        tool_choice=tool_choice,
        parallel_tool_calls=parallel,
        legacy_functions=legacy,
        response_format=_parse_response_format(b),
    )


def _text_content(msg: _Obj, role: str, *, required: bool) -> tuple[str | None, list[tuple[int, str]]]:
    """The message's text (parts joined by newlines) and its non-text parts."""
    param = msg.param("content")
    value = msg.get("content")
    if value is None:
        if required:
            raise missing(param)
        return None, []
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise invalid_type(param, "one of a string or array of objects", value)
    if role == "user":
        allowed = USER_PART_TYPES
    elif role == "assistant":
        allowed = ASSISTANT_PART_TYPES
    else:
        allowed = (TEXT_PART,)
    texts: list[str] = []
    media: list[tuple[int, str]] = []
    for i, part in enumerate(value):
        p = _item(param, i)
        if not isinstance(part, dict):
            raise invalid_type(p, "an object", part)
        po = _Obj(part, p)
        kind = po.string("type", required=True, enum=allowed)
        if kind == "text":
            texts.append(po.string("text", required=True) or "")
        elif kind == "refusal":
            texts.append(po.string("refusal", required=True) or "")
        else:
            po.obj(kind or "", required=True)
            media.append((i, kind or ""))
    return "\n".join(texts), media


def _parse_tool_calls(msg: _Obj) -> list[ToolCall]:
    calls = msg.array("tool_calls")
    if calls is None:
        return []
    out: list[ToolCall] = []
    for i, raw in enumerate(calls):
        p = _item(msg.param("tool_calls"), i)
        if not isinstance(raw, dict):
            raise invalid_type(p, "an object", raw)
        c = _Obj(raw, p)
        call_id = c.string("id", required=True) or ""
        c.string("type", required=True, enum=("function",))
        fn = c.obj("function", required=True)
        assert fn is not None
        name = fn.string("name", required=True) or ""
        arguments = fn.string("arguments", required=True) or ""
        out.append(ToolCall(id=call_id, name=name, arguments=arguments))
    return out


def _parse_messages(b: _Obj) -> list[ChatMessage]:
    raw = b.array("messages", required=True, min_len=1)
    assert raw is not None
    messages: list[ChatMessage] = []
    for i, item in enumerate(raw):
        p = _item("messages", i)
        if not isinstance(item, dict):
            raise invalid_type(p, "an object", item)
        m = _Obj(item, p)
        role = m.string("role", required=True, enum=ROLES) or ""
        name = m.string("name")
        if name is not None:
            _check_name(m.param("name"), name)
        msg = ChatMessage(role=role, name=name)
        if role == "assistant":
            msg.tool_calls = _parse_tool_calls(m)
            fc = m.obj("function_call")
            if fc is not None:
                msg.function_call = ToolCall(
                    id="", name=fc.string("name", required=True) or "",
                    arguments=fc.string("arguments", required=True) or "",
                )
            needs_content = not msg.tool_calls and msg.function_call is None
            msg.content, _ = _text_content(m, role, required=needs_content)
        elif role == "tool":
            msg.content, _ = _text_content(m, role, required=True)
            msg.tool_call_id = m.string("tool_call_id", required=True)
        elif role == "function":
            if name is None:
                raise missing(m.param("name"))
            msg.content, _ = _text_content(m, role, required=False)
        else:
            msg.content, msg.media_parts = _text_content(m, role, required=True)
        messages.append(msg)
    _check_tool_sequence(messages)
    return messages


def _check_tool_sequence(messages: list[ChatMessage]) -> None:
    """OpenAI's rules: a tool message answers an earlier assistant `tool_calls`, and every call gets an answer."""
    open_calls: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made it
    answered: set[str] = set()
    owner: int | None = None
    for i, msg in enumerate(messages):
        if msg.role == "tool":
            if owner is None:
                raise ProtocolError(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.",
                    f"messages.[{i}].role",
                )
            if msg.tool_call_id not in open_calls and msg.tool_call_id not in answered:
                raise ProtocolError(
                    f"Invalid parameter: 'tool_call_id' of '{msg.tool_call_id}' not found in 'tool_calls' of "
                    "previous message.",
                    f"messages.[{i}].tool_call_id",
                )
            open_calls.pop(msg.tool_call_id or "", None)
            answered.add(msg.tool_call_id or "")
            continue
        if open_calls:
            _unanswered(open_calls)
        owner = None
        if msg.role == "assistant" and msg.tool_calls:
            owner = i
            open_calls = {c.id: i for c in msg.tool_calls}
            answered = set()
    if open_calls:
        _unanswered(open_calls)


def _unanswered(open_calls: dict[str, int]) -> None:
    index = next(iter(open_calls.values()))
    raise ProtocolError(
        "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
        f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(open_calls)}",
        f"messages.[{index}].role",
    )


def _parse_function_def(fn: _Obj) -> FunctionDef:
    name = fn.string("name", required=True) or ""
    _check_name(fn.param("name"), name)
    description = fn.string("description")
    params_value = fn.get("parameters")
    parameters: dict[str, Any] | None = None
    if params_value is not None:
        if not isinstance(params_value, dict):
            raise invalid_type(fn.param("parameters"), "an object", params_value)
        parameters = params_value
        _check_parameters_schema(name, parameters, fn.param("parameters"))
    return FunctionDef(name=name, description=description, parameters=parameters, strict=fn.boolean("strict"))


def _check_parameters_schema(name: str, schema: dict[str, Any], param: str) -> None:
    """A function's parameters must be a JSON Schema object (an empty `{}` means no parameters)."""
    if not schema:
        return

    def bad(detail: str) -> ProtocolError:
        return ProtocolError(
            f"Invalid schema for function '{name}': In context=(), {detail}", param, "invalid_function_parameters"
        )

    kind = schema.get("type")
    if kind != "object":
        raise bad(f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{kind}\"'.")
    props = schema.get("properties")
    if props is not None and (
        not isinstance(props, dict) or not all(isinstance(v, (dict, bool)) for v in props.values())
    ):
        raise bad("'properties' must be an object mapping property names to schemas.")
    required = schema.get("required")
    if required is not None and (not isinstance(required, list) or not all(isinstance(r, str) for r in required)):
        raise bad("'required' must be an array of strings.")


def _parse_tools(b: _Obj) -> tuple[list[FunctionDef], ToolChoice | None, bool]:
    tools_raw = b.array("tools", min_len=1, max_len=MAX_TOOLS)
    functions_raw = b.array("functions", min_len=1, max_len=MAX_TOOLS)
    if tools_raw is not None and functions_raw is not None:
        raise ProtocolError("Invalid request: 'functions' and 'tools' cannot both be provided.", "functions")

    legacy = functions_raw is not None
    defs: list[FunctionDef] = []
    if tools_raw is not None:
        for i, raw in enumerate(tools_raw):
            p = _item("tools", i)
            if not isinstance(raw, dict):
                raise invalid_type(p, "an object", raw)
            t = _Obj(raw, p)
            t.string("type", required=True, enum=("function",))
            fn = t.obj("function", required=True)
            assert fn is not None
            defs.append(_parse_function_def(fn))
    elif functions_raw is not None:
        for i, raw in enumerate(functions_raw):
            p = _item("functions", i)
            if not isinstance(raw, dict):
                raise invalid_type(p, "an object", raw)
            defs.append(_parse_function_def(_Obj(raw, p)))

    key = "function_call" if legacy or (b.has("function_call") and tools_raw is None) else "tool_choice"
    choice = _parse_tool_choice(b, key, defs)
    if choice is not None and not defs and choice.mode != "none":
        owner = "functions" if key == "function_call" else "tools"
        raise ProtocolError(
            f"Invalid value for '{key}': '{key}' is only allowed when '{owner}' are specified.", key
        )
    if defs and choice is None:
        choice = ToolChoice("auto")
    return defs, choice, legacy


def _parse_tool_choice(b: _Obj, key: str, defs: list[FunctionDef]) -> ToolChoice | None:
    value = b.get(key)
    if value is None:
        return None
    legacy = key == "function_call"
    if isinstance(value, str):
        supported = ("none", "auto") if legacy else ("none", "auto", "required")
        if value not in supported:
            raise invalid_value(key, value, supported)
        return ToolChoice(value)  # type: ignore[arg-type]
    if not isinstance(value, dict):
        raise invalid_type(key, "one of a string or object", value)
    c = _Obj(value, key)
    if legacy:
        name = c.string("name", required=True) or ""
    else:
        c.string("type", required=True, enum=("function",))
        fn = c.obj("function", required=True)
        assert fn is not None
        name = fn.string("name", required=True) or ""
    if defs and name not in {d.name for d in defs}:
        owner = "functions" if legacy else "tools"
        raise ProtocolError(
            f"Invalid value for '{key}': function '{name}' was not found in '{owner}'.", key, "invalid_value"
        )
    return ToolChoice("named", name)


def _parse_response_format(b: _Obj) -> ResponseFormat:
    rf = b.obj("response_format")
    if rf is None:
        return ResponseFormat()
    kind = rf.string("type", required=True, enum=("text", "json_object", "json_schema"))
    if kind != "json_schema":
        return ResponseFormat(type=kind)  # type: ignore[arg-type]
    js = rf.obj("json_schema", required=True)
    assert js is not None
    name = js.string("name", required=True) or ""
    _check_name(js.param("name"), name)
    schema = js.obj("schema")
    return ResponseFormat(
        type="json_schema", name=name, schema=dict(schema.data) if schema else None, strict=js.boolean("strict")
    )


# ---------------------------------------------------------------------------------------------------------------
# Completions


def parse_completion_request(body: bytes | str | Mapping[str, Any]) -> CompletionRequest:
    """Validate a `/v1/completions` body (raw bytes or an already decoded object)."""
    b = _as_body(body)
    common = _parse_common(b, chat=False)
    prompts = _parse_prompt(b)
    logprobs = b.integer("logprobs", lo=0, hi=MAX_COMPLETION_LOGPROBS)
    echo = bool(b.boolean("echo"))
    if b.string("suffix"):
        raise ProtocolError("Invalid value for 'suffix': suffix is not supported by this model.", "suffix",
                            "unsupported_parameter")
    best_of = b.integer("best_of", lo=1, hi=20)
    if best_of is not None and best_of < common["n"]:
        raise ProtocolError("best_of must be greater than or equal to n.", "best_of", "invalid_value")
    if best_of is not None and best_of > common["n"]:
        raise ProtocolError(
            "Invalid value for 'best_of': values greater than 'n' are not supported.", "best_of",
            "unsupported_parameter",
        )
    return CompletionRequest(**common, prompts=prompts, logprobs=logprobs, echo=echo, best_of=best_of)


def _parse_prompt(b: _Obj) -> list[PromptInput]:
    value = b.get("prompt")
    expected = "one of a string, array of strings, array of integers, or array of arrays of integers"
    if value is None:
        raise missing("prompt")
    if isinstance(value, str):
        return [PromptInput(text=value)]
    if not isinstance(value, list):
        raise invalid_type("prompt", expected, value)
    _check_length("prompt", value, 1, MAX_PROMPTS)
    if all(_is_int(v) for v in value):
        return [PromptInput(token_ids=_token_ids("prompt", value))]
    prompts: list[PromptInput] = []
    for i, item in enumerate(value):
        p = _item("prompt", i)
        if isinstance(item, str):
            prompts.append(PromptInput(text=item))
        elif isinstance(item, list):
            _check_length(p, item, 1, None)
            prompts.append(PromptInput(token_ids=_token_ids(p, item)))
        else:
            raise invalid_type(p, "one of a string or array of integers", item)
    return prompts


def _token_ids(param: str, values: list[Any]) -> list[int]:
    for i, v in enumerate(values):
        if not _is_int(v):
            raise invalid_type(_item(param, i), "an integer", v)
        _check_range(_item(param, i), int(v), 0, None, "integer")
    return [int(v) for v in values]


# ---------------------------------------------------------------------------------------------------------------
# Generation plans


ChatTemplate = Callable[[list[dict[str, str]], bool], str]
"""Renders `[{"role", "content"}]` (roles system, user, assistant) to prompt text; the bool is
add_generation_prompt. The served model's own template (ChatML for SmolLM2) is passed by the servicer."""


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
    """ChatML, the format of SmolLM2-Instruct (without its default system message)."""
    out = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return out + ("<|im_start|>assistant\n" if add_generation_prompt else "")


@dataclass(frozen=True)
class EngineLimits:
    """What the serving model allows and supports; the plan refuses what it cannot honour."""

    context_length: int
    max_output_tokens: int | None = None
    max_n: int = 16  # OpenAI allows 128; a small CPU engine runs each choice as its own sequence
    max_choices: int = 128  # completions: prompts x n
    vocab_size: int | None = None
    supports_logit_bias: bool = False  # SamplingParams has no field for it yet
    supports_min_tokens: bool = False  # idem
    supports_prompt_logprobs: bool = False  # echo + logprobs needs the prompt's logprobs from the engine
    supports_media: bool = False  # image/audio/file message parts


def _check_limits(req: _CommonRequest, limits: EngineLimits) -> None:
    if req.n > limits.max_n:
        raise ProtocolError(
            f"Invalid 'n': integer above maximum value. Expected a value <= {limits.max_n}, "
            f"but got {req.n} instead.",
            "n",
            "integer_above_max_value",
        )
    too_many = limits.max_output_tokens is not None and (req.max_tokens or 0) > limits.max_output_tokens
    if too_many:
        raise ProtocolError(
            f"max_tokens is too large: {req.max_tokens}. This model supports at most {limits.max_output_tokens} "
            f"completion tokens, whereas you provided {req.max_tokens}.",
            "max_tokens",
            "invalid_value",
        )
    if req.logit_bias and not limits.supports_logit_bias:
        raise ProtocolError(
            "Invalid value for 'logit_bias': logit_bias is not supported by this model.", "logit_bias",
            "unsupported_parameter",
        )
    if limits.vocab_size is not None:
        for token in req.logit_bias:
            if token >= limits.vocab_size:
                raise ProtocolError(
                    f"Invalid key in 'logit_bias': {token}. Maximum value is {limits.vocab_size - 1}.",
                    "logit_bias",
                    "invalid_value",
                )
    if req.min_tokens and not limits.supports_min_tokens:
        raise ProtocolError(
            "Invalid value for 'min_tokens': min_tokens is not supported by this model.", "min_tokens",
            "unsupported_parameter",
        )


def _base_params(
    req: _CommonRequest, *, logprobs: bool, top_logprobs: int, extra_stop: Sequence[str] = ()
) -> SamplingParams:
    """One choice's sampling with OpenAI's defaults; max_tokens is a placeholder until the prompt is counted."""
    temperature = 1.0 if req.temperature is None else req.temperature
    top_p = 1.0 if req.top_p is None else req.top_p
    if top_p == 0:  # OpenAI accepts 0: only the most likely token survives, i.e. greedy
        temperature, top_p = 0.0, 1.0
    stop = list(req.stop)
    stop.extend(s for s in extra_stop if s not in stop)
    return SamplingParams(
        temperature=temperature,
        top_p=top_p,
        top_k=req.top_k or 0,
        max_tokens=req.max_tokens or 16,
        frequency_penalty=req.frequency_penalty or 0.0,
        presence_penalty=req.presence_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        stop=stop,
        stop_token_ids=list(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
        seed=req.seed,
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def _choice_seed(seed: int | None, i: int) -> int | None:
    if seed is None:
        return None
    return (seed + i - INT64_MIN) % 2**64 + INT64_MIN  # seed, seed+1, ... wrapped into int64


@dataclass
class _Plan:
    """What both endpoints' plans share: n, the base sampling, and the context arithmetic."""

    n: int
    base: SamplingParams
    max_tokens: int | None  # as requested; None = the endpoint's default
    context_length: int
    max_output_tokens: int | None
    logit_bias: dict[int, float]
    min_tokens: int
    stream: bool
    include_usage: bool

    def _resolve_max_tokens(self, prompt_tokens: int, default: int | None) -> int:
        """The completion budget, or OpenAI's context_length_exceeded error. An explicit max_tokens must fit
        beside the prompt; a default (chat: the rest of the context; completions: 16) shrinks to what fits."""
        room = self.context_length - prompt_tokens
        if self.max_tokens is not None:
            if prompt_tokens + self.max_tokens > self.context_length:
                self._too_long(prompt_tokens, self.max_tokens)
            return self.max_tokens
        if room <= 0:
            self._too_long(prompt_tokens, default or 1)
        budget = room if default is None else min(default, room)
        return budget if self.max_output_tokens is None else min(budget, self.max_output_tokens)

    def _too_long(self, prompt_tokens: int, completion: int) -> None:
        raise NotImplementedError

    def _fan_out(self, max_tokens: int) -> list[SamplingParams]:
        return [replace(self.base, max_tokens=max_tokens, seed=_choice_seed(self.base.seed, i),
                        stop=list(self.base.stop), stop_token_ids=list(self.base.stop_token_ids))
                for i in range(self.n)]


@dataclass
class ChatPlan(_Plan):
    """How to run one chat request: the prompt text (template applied, prefill appended), n, sampling, and how
    to read the output back (tools, legacy functions, JSON mode)."""

    prompt: str = ""
    assistant_prefix: str = ""  # prefill, already at the end of `prompt`; it counts as the assistant's text
    tool_spec: ToolSpec | None = None
    response_format: ResponseFormat = field(default_factory=ResponseFormat)

    def sampling_params(self, prompt_tokens: int) -> list[SamplingParams]:
        """One SamplingParams per choice (seeds seed, seed+1, ...); max_tokens resolved against the context."""
        return self._fan_out(self._resolve_max_tokens(prompt_tokens, None))

    def _too_long(self, prompt_tokens: int, completion: int) -> None:
        raise ProtocolError(
            f"This model's maximum context length is {self.context_length} tokens. However, you requested "
            f"{prompt_tokens + completion} tokens ({prompt_tokens} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion.",
            "messages",
            "context_length_exceeded",
        )

    def output_processor(self) -> OutputProcessor:
        """A fresh processor for one choice, already fed the prefill."""
        if self.tool_spec is not None:
            return ToolCallOutput(self.tool_spec, self.assistant_prefix)
        if self.response_format.type != "text":
            return JsonOutput(self.assistant_prefix)
        return PlainOutput(self.assistant_prefix)


@dataclass
class CompletionPlan(_Plan):
    """How to run one completions request: `len(prompts) * n` choices, choice index = prompt index * n + i."""

    prompts: list[PromptInput] = field(default_factory=list)
    echo: bool = False
    logprobs: int | None = None

    @property
    def choice_count(self) -> int:
        return len(self.prompts) * self.n

    def sampling_params(self, prompt_tokens: int) -> list[SamplingParams]:
        """For one prompt: n SamplingParams (max_tokens defaults to 16, as OpenAI's)."""
        return self._fan_out(self._resolve_max_tokens(prompt_tokens, 16))

    def _too_long(self, prompt_tokens: int, completion: int) -> None:
        raise ProtocolError(
            f"This model's maximum context length is {self.context_length} tokens, however you requested "
            f"{prompt_tokens + completion} tokens ({prompt_tokens} in your prompt; {completion} for the "
            "completion). Please reduce your prompt; or completion length.",
            "prompt",
            "context_length_exceeded",
        )


def _tool_spec(req: ChatCompletionRequest) -> ToolSpec | None:
    choice = req.tool_choice
    if not req.tools or choice is None or choice.mode == "none":
        return None
    mode, forced = choice.mode, choice.name
    if mode == "required" and len(req.tools) == 1:
        # One function to choose from: "required" means that function. Naming it leaves a small model only the
        # arguments to write; left to pick the name, SmolLM2-135M drifts into prose after `"name": "`.
        mode, forced = "named", req.tools[0].name
    return ToolSpec(
        functions=tuple(req.tools),
        mode=mode,  # type: ignore[arg-type]
        forced_name=forced,
        parallel=req.parallel_tool_calls is not False,
        legacy=req.legacy_functions,
    )


def render_conversation(messages: list[ChatMessage]) -> list[dict[str, str]]:
    """The request's messages as plain turns for a chat template: developer becomes system, assistant tool calls
    are written as `<tool_call>` blocks, and tool (and legacy function) results become one user turn of
    `<tool_response>` blocks per run of consecutive results."""
    names: dict[str, str] = {}
    turns: list[dict[str, str]] = []
    results: list[str] = []

    def flush() -> None:
        if results:
            turns.append({"role": "user", "content": "\n".join(results)})
            results.clear()

    for msg in messages:
        if msg.role in ("tool", "function"):
            name = msg.name if msg.role == "function" else names.get(msg.tool_call_id or "")
            results.append(format_tool_response(name, msg.content or ""))
            continue
        flush()
        if msg.role == "assistant":
            calls = list(msg.tool_calls) or ([msg.function_call] if msg.function_call else [])
            for c in calls:
                names[c.id] = c.name
            parts = [msg.content] if msg.content else []
            if calls:
                parts.append(format_tool_calls(calls))
            turns.append({"role": "assistant", "content": "\n".join(parts)})
        else:
            role = "system" if msg.role == "developer" else msg.role
            turns.append({"role": role, "content": msg.content or ""})
    flush()
    return turns


def _with_system(turns: list[dict[str, str]], extra: str) -> list[dict[str, str]]:
    if turns and turns[0]["role"] == "system":
        first = turns[0]["content"]
        return [{"role": "system", "content": f"{first}\n\n{extra}" if first else extra}, *turns[1:]]
    return [{"role": "system", "content": extra}, *turns]


def _plan_fields(req: _CommonRequest, base: SamplingParams, limits: EngineLimits) -> dict[str, Any]:
    """What both plans take from the request and the model's limits."""
    return {
        "n": req.n,
        "base": base,
        "max_tokens": req.max_tokens,
        "context_length": limits.context_length,
        "max_output_tokens": limits.max_output_tokens,
        "logit_bias": dict(req.logit_bias),
        "min_tokens": req.min_tokens,
        "stream": req.stream,
        "include_usage": req.include_usage,
    }


def build_chat_plan(req: ChatCompletionRequest, chat_template: ChatTemplate, limits: EngineLimits) -> ChatPlan:
    """The prompt and sampling for a local model. Tools go into the system prompt (tool_choice "none" leaves them
    out); "required" and a named choice prefill the call; json_object / json_schema add an instruction and prefill
    `{` (unless tools are active, which then take precedence)."""
    _check_limits(req, limits)
    if not limits.supports_media:
        for i, msg in enumerate(req.messages):
            for j, kind in msg.media_parts:
                raise ProtocolError(
                    f"Invalid content type. {kind} is only supported by certain models.",
                    f"messages[{i}].content[{j}].type",
                    "invalid_value",
                )

    spec = _tool_spec(req)
    turns = render_conversation(req.messages)
    sections: list[str] = []
    prefix = ""
    if spec is not None:
        sections.append(tools_system_prompt(spec))
        prefix = assistant_prefix(spec)
    if req.response_format.type != "text":
        sections.append(json_mode_instruction(req.response_format.schema))
        if spec is None:
            prefix = "{"
    if sections:
        turns = _with_system(turns, "\n\n".join(sections))
    prompt = chat_template(turns, True) + prefix

    top = req.top_logprobs or 0
    base = _base_params(req, logprobs=req.logprobs, top_logprobs=top,
                        extra_stop=(TOOL_CALL_CLOSE,) if spec is not None else ())
    return ChatPlan(
        **_plan_fields(req, base, limits),
        prompt=prompt,
        assistant_prefix=prefix,
        tool_spec=spec,
        response_format=req.response_format,
    )


def build_completion_plan(req: CompletionRequest, limits: EngineLimits) -> CompletionPlan:
    """Sampling for `/v1/completions`: logprobs N asks the engine for the chosen token and N alternatives."""
    _check_limits(req, limits)
    if req.echo and req.logprobs is not None and not limits.supports_prompt_logprobs:
        raise ProtocolError(
            "Invalid value for 'echo': echo with logprobs is not supported by this model.", "echo",
            "unsupported_parameter",
        )
    if limits.vocab_size is not None:
        for i, p in enumerate(req.prompts):
            for j, tok in enumerate(p.token_ids or []):
                if tok >= limits.vocab_size:
                    param = f"prompt[{j}]" if len(req.prompts) == 1 else f"prompt[{i}][{j}]"
                    raise ProtocolError(
                        f"Invalid token in '{param}': {tok}. Maximum value is {limits.vocab_size - 1}.",
                        param,
                        "invalid_value",
                    )
    if len(req.prompts) * req.n > limits.max_choices:
        raise ProtocolError(
            f"Invalid 'prompt': {len(req.prompts)} prompts with n={req.n} make {len(req.prompts) * req.n} choices; "
            f"this model serves at most {limits.max_choices} per request.",
            "prompt",
            "invalid_value",
        )
    base = _base_params(req, logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0)
    return CompletionPlan(
        **_plan_fields(req, base, limits),
        prompts=list(req.prompts),
        echo=req.echo,
        logprobs=req.logprobs,
    )


# ---------------------------------------------------------------------------------------------------------------
# /v1/models


MODEL_CATEGORIES = ("text-generation", "chat", "embedding")
MODEL_SIZES = ("small", "medium", "large", "xl")


@dataclass(frozen=True)
class ModelPricing:
    """Seed 003's `pricing`."""

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    currency: str = "USD"
    per_tokens: int = 1000


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as `/v1/models` shows it: OpenAI's fields plus seed 003's."""

    id: str
    name: str
    provider: str
    category: str
    created_at: datetime
    updated_at: datetime
    description: str = ""
    context_length: int = 0
    max_output_tokens: int = 0
    pricing: ModelPricing = field(default_factory=ModelPricing)
    capabilities: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    size: str | None = None  # "small", "medium", "large", "xl" (the `size` filter)
    owned_by: str | None = None  # default: "llmlab" for local models, else the provider


def _rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render_model(model: ModelInfo) -> dict[str, Any]:
    """`{id, object: "model", created, owned_by}` and seed 003's fields, named as `OpenAIModel` in the proto
    (so `json_format.ParseDict` fills the message)."""
    created = model.created_at if model.created_at.tzinfo else model.created_at.replace(tzinfo=UTC)
    return {
        "id": model.id,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": model.owned_by or ("llmlab" if model.provider == "local" else model.provider),
        "name": model.name,
        "provider": model.provider,
        "category": model.category,
        "description": model.description,
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "pricing": {
            "input_tokens": model.pricing.input_tokens,
            "output_tokens": model.pricing.output_tokens,
            "currency": model.pricing.currency,
            "per_tokens": model.pricing.per_tokens,
        },
        "capabilities": list(model.capabilities),
        "languages": list(model.languages),
        "created_at": _rfc3339(model.created_at),
        "updated_at": _rfc3339(model.updated_at),
    }


@dataclass(frozen=True)
class ModelQuery:
    """Validated filters and paging of `GET /v1/models`."""

    category: str | None = None
    size: str | None = None
    provider: str | None = None
    page: int = 1
    per_page: int = 20


def parse_model_query(
    category: str = "", size: str = "", provider: str = "", page: int | None = None, per_page: int | None = None
) -> ModelQuery:
    """The list request's fields (proto3 gives "" for unset strings) checked as OpenAI-style 400s."""
    if category and category not in MODEL_CATEGORIES:
        raise invalid_value("category", category, MODEL_CATEGORIES)
    if size and size not in MODEL_SIZES:
        raise invalid_value("size", size, MODEL_SIZES)
    page = 1 if page is None else page
    per_page = 20 if per_page is None else per_page
    _check_range("page", page, 1, None, "integer")
    _check_range("per_page", per_page, 1, 100, "integer")
    return ModelQuery(category or None, size or None, provider or None, page, per_page)


def list_models(models: Sequence[ModelInfo], query: ModelQuery) -> dict[str, Any]:
    """`{object: "list", data, total, page, per_page}` for the models matching the query, sorted by id."""
    matching = [
        m for m in sorted(models, key=lambda m: m.id)
        if (query.category is None or m.category == query.category)
        and (query.size is None or m.size == query.size)
        and (query.provider is None or m.provider.lower() == query.provider.lower())
    ]
    start = (query.page - 1) * query.per_page
    return {
        "object": "list",
        "data": [render_model(m) for m in matching[start:start + query.per_page]],
        "total": len(matching),
        "page": query.page,
        "per_page": query.per_page,
    }
