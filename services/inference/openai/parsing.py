"""Parsing /v1 bodies into the typed requests of protocol.py, validated as OpenAI does. Pure: no I/O, no engine.

    req = parse_chat_request(http_body.data)   # ProtocolError -> 400 in OpenAI's error shape
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from llmlab.sampling import BOUNDS, MAX_STOP_SEQUENCES

from .protocol import (
    ASSISTANT_PART_TYPES,
    INT64_MAX,
    INT64_MIN,
    ROLES,
    TEXT_PART,
    USER_PART_TYPES,
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    PromptInput,
    ResponseFormat,
    ToolChoice,
)
from .tools import FunctionDef, ToolCall
from .validation import (
    JsonObject,
    ProtocolError,
    check_length,
    check_name,
    check_range,
    given,
    invalid_type,
    invalid_value,
    is_int,
    item_param,
    load_json_body,
    missing,
)

MAX_TOOLS = 128
OPENAI_MAX_N = 128  # OpenAI's own limit on n; the served model's (BOUNDS["n"]) is checked by the plan
MAX_COMPLETION_LOGPROBS = 5
MAX_PROMPTS = 2048


def _parse_common(body: JsonObject, *, chat: bool) -> dict[str, Any]:
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
    # The bounds are llmlab.sampling's; OpenAI's wording. OpenAI also accepts top_p 0 (greedy, see the plan) and
    # top_k -1 (off), which the shared table words as "greater than 0" and "at least 0".
    out["temperature"] = _bounded(body, "temperature")
    out["top_p"] = body.number("top_p", lo=0, hi=BOUNDS["top_p"].hi)
    out["n"] = body.integer("n", lo=1, hi=OPENAI_MAX_N) or 1
    out["stop"] = _parse_stop(body)
    out["seed"] = body.integer("seed", lo=INT64_MIN, hi=INT64_MAX)
    out["presence_penalty"] = _bounded(body, "presence_penalty")
    out["frequency_penalty"] = _bounded(body, "frequency_penalty")
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
    out["repetition_penalty"] = _bounded(body, "repetition_penalty")
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
        if not is_int(tok):
            raise invalid_type(item_param("stop_token_ids", i), "an integer", tok)
        check_range(item_param("stop_token_ids", i), int(tok), 0, None, "integer")
    out["stop_token_ids"] = [int(t) for t in ids]
    return out


def _bounded(body: JsonObject, key: str) -> float | None:
    bound = BOUNDS[key]
    return body.number(key, lo=bound.lo, hi=bound.hi, lo_exclusive=bound.lo_open)


def _parse_stop(body: JsonObject) -> list[str]:
    value = body.get("stop")
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise invalid_type("stop", "one of a string or array of strings", value)
    check_length("stop", value, 0, MAX_STOP_SEQUENCES)
    for i, s in enumerate(value):
        if not isinstance(s, str):
            raise invalid_type(item_param("stop", i), "a string", s)
    return [s for s in value if s]


def _parse_logit_bias(body: JsonObject) -> dict[int, float]:
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
                f"Invalid value for 'logit_bias': bias must be between -100 and 100, but got {given(value)} "
                f"for token {key}.",
                "logit_bias",
                "invalid_value",
            )
        out[int(key)] = float(value)
    return out


def _as_body(body: bytes | str | Mapping[str, Any]) -> JsonObject:
    if isinstance(body, (bytes, bytearray, memoryview, str)):
        return JsonObject(load_json_body(bytes(body) if not isinstance(body, str) else body))
    return JsonObject(body)


# ---------------------------------------------------------------------------------------------------------------
# Chat


def parse_chat_request(body: bytes | str | Mapping[str, Any]) -> ChatCompletionRequest:
    """Validate a `/v1/chat/completions` body (raw bytes or an already decoded object)."""
    b = _as_body(body)
    common = _parse_common(b, chat=True)
    messages = _parse_messages(b)

    logprobs = bool(b.boolean("logprobs"))
    bound = BOUNDS["top_logprobs"]
    top_logprobs = b.integer("top_logprobs", lo=int(bound.lo or 0), hi=int(bound.hi or 0))
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


def _text_content(msg: JsonObject, role: str, *, required: bool) -> tuple[str | None, list[tuple[int, str]]]:
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
        p = item_param(param, i)
        if not isinstance(part, dict):
            raise invalid_type(p, "an object", part)
        po = JsonObject(part, p)
        kind = po.string("type", required=True, enum=allowed)
        if kind == "text":
            texts.append(po.string("text", required=True) or "")
        elif kind == "refusal":
            texts.append(po.string("refusal", required=True) or "")
        else:
            po.obj(kind or "", required=True)
            media.append((i, kind or ""))
    return "\n".join(texts), media


def _parse_tool_calls(msg: JsonObject) -> list[ToolCall]:
    calls = msg.array("tool_calls")
    if calls is None:
        return []
    out: list[ToolCall] = []
    for i, raw in enumerate(calls):
        p = item_param(msg.param("tool_calls"), i)
        if not isinstance(raw, dict):
            raise invalid_type(p, "an object", raw)
        c = JsonObject(raw, p)
        call_id = c.string("id", required=True) or ""
        c.string("type", required=True, enum=("function",))
        fn = c.obj("function", required=True)
        assert fn is not None
        name = fn.string("name", required=True) or ""
        arguments = fn.string("arguments", required=True) or ""
        out.append(ToolCall(id=call_id, name=name, arguments=arguments))
    return out


def _parse_messages(b: JsonObject) -> list[ChatMessage]:
    raw = b.array("messages", required=True, min_len=1)
    assert raw is not None
    messages: list[ChatMessage] = []
    for i, item in enumerate(raw):
        p = item_param("messages", i)
        if not isinstance(item, dict):
            raise invalid_type(p, "an object", item)
        m = JsonObject(item, p)
        role = m.string("role", required=True, enum=ROLES) or ""
        name = m.string("name")
        if name is not None:
            check_name(m.param("name"), name)
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


def _parse_function_def(fn: JsonObject) -> FunctionDef:
    name = fn.string("name", required=True) or ""
    check_name(fn.param("name"), name)
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


def _parse_tools(b: JsonObject) -> tuple[list[FunctionDef], ToolChoice | None, bool]:
    tools_raw = b.array("tools", min_len=1, max_len=MAX_TOOLS)
    functions_raw = b.array("functions", min_len=1, max_len=MAX_TOOLS)
    if tools_raw is not None and functions_raw is not None:
        raise ProtocolError("Invalid request: 'functions' and 'tools' cannot both be provided.", "functions")

    legacy = functions_raw is not None
    defs: list[FunctionDef] = []
    if tools_raw is not None:
        for i, raw in enumerate(tools_raw):
            p = item_param("tools", i)
            if not isinstance(raw, dict):
                raise invalid_type(p, "an object", raw)
            t = JsonObject(raw, p)
            t.string("type", required=True, enum=("function",))
            fn = t.obj("function", required=True)
            assert fn is not None
            defs.append(_parse_function_def(fn))
    elif functions_raw is not None:
        for i, raw in enumerate(functions_raw):
            p = item_param("functions", i)
            if not isinstance(raw, dict):
                raise invalid_type(p, "an object", raw)
            defs.append(_parse_function_def(JsonObject(raw, p)))

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


def _parse_tool_choice(b: JsonObject, key: str, defs: list[FunctionDef]) -> ToolChoice | None:
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
    c = JsonObject(value, key)
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


def _parse_response_format(b: JsonObject) -> ResponseFormat:
    rf = b.obj("response_format")
    if rf is None:
        return ResponseFormat()
    kind = rf.string("type", required=True, enum=("text", "json_object", "json_schema"))
    if kind != "json_schema":
        return ResponseFormat(type=kind)  # type: ignore[arg-type]
    js = rf.obj("json_schema", required=True)
    assert js is not None
    name = js.string("name", required=True) or ""
    check_name(js.param("name"), name)
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


def _parse_prompt(b: JsonObject) -> list[PromptInput]:
    value = b.get("prompt")
    expected = "one of a string, array of strings, array of integers, or array of arrays of integers"
    if value is None:
        raise missing("prompt")
    if isinstance(value, str):
        return [PromptInput(text=value)]
    if not isinstance(value, list):
        raise invalid_type("prompt", expected, value)
    check_length("prompt", value, 1, MAX_PROMPTS)
    if all(is_int(v) for v in value):
        return [PromptInput(token_ids=_token_ids("prompt", value))]
    prompts: list[PromptInput] = []
    for i, item in enumerate(value):
        p = item_param("prompt", i)
        if isinstance(item, str):
            prompts.append(PromptInput(text=item))
        elif isinstance(item, list):
            check_length(p, item, 1, None)
            prompts.append(PromptInput(token_ids=_token_ids(p, item)))
        else:
            raise invalid_type(p, "one of a string or array of integers", item)
    return prompts


def _token_ids(param: str, values: list[Any]) -> list[int]:
    for i, v in enumerate(values):
        if not is_int(v):
            raise invalid_type(item_param(param, i), "an integer", v)
        check_range(item_param(param, i), int(v), 0, None, "integer")
    return [int(v) for v in values]


