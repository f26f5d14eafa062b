"""Function calling and JSON mode for a small local model: instructions rendered into the prompt, output parsed back.

The format is the one SmolLM2-Instruct was tuned on (its model card, "Function calling"): the functions are listed
as OpenAI tool objects inside `<tools>...</tools>` in the system prompt, and the model answers with a JSON list of
calls in one block::

    <tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>

The parser is lenient about what a 135M model actually writes (a single object instead of a list, a missing closing
tag at the end, `parameters` for `arguments`, arguments as a JSON string, several blocks, a bare JSON list without
tags) and strict about what reaches the client: every call must name a declared function and carry a JSON object
as arguments, or the whole output falls back to plain content. It never raises.

Forcing (`tool_choice: "required"` or a named function, `response_format: json_object`) is done by prefilling the
assistant turn (`<tool_call>[{"name": "`, or `{`): the model can only continue the call or the object. The prefill
is part of the assistant's text for parsing; processors are fed it first.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from .call_stream import CallStream

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
TOOL_RESPONSE_OPEN = "<tool_response>"
TOOL_RESPONSE_CLOSE = "</tool_response>"

FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_ALNUM = string.ascii_letters + string.digits


def new_call_id() -> str:
    """OpenAI's tool call id shape: `call_` and 24 random letters and digits."""
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def dumps_compact(value: Any) -> str:
    """JSON the way OpenAI writes `arguments`: no spaces, UTF-8 kept."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class FunctionDef:
    """A callable function as the request declares it (`tools[].function` or legacy `functions[]`)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    def as_tool(self) -> dict[str, Any]:
        fn: dict[str, Any] = {"name": self.name}
        if self.description:
            fn["description"] = self.description
        fn["parameters"] = self.parameters if self.parameters is not None else {"type": "object", "properties": {}}
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolCall:
    """One function call: from an assistant message of the request, or parsed from the model's output."""

    id: str
    name: str
    arguments: str  # JSON text, as OpenAI carries it


@dataclass(frozen=True)
class ToolSpec:
    """What the prompt offers and the parser accepts for one request.

    mode: "auto" (the model may call), "required" (it must call one or more), "named" (it must call `forced_name`).
    legacy: the request used `functions`/`function_call`, so at most one call comes back, as `function_call`.
    """

    functions: tuple[FunctionDef, ...]
    mode: Literal["auto", "required", "named"] = "auto"
    forced_name: str | None = None
    parallel: bool = True
    legacy: bool = False

    @property
    def names(self) -> frozenset[str]:
        return frozenset(f.name for f in self.functions)

    @property
    def max_calls(self) -> int | None:
        return 1 if (self.legacy or not self.parallel) else None


# ---------------------------------------------------------------------------------------------------------------
# Prompt side


def tools_system_prompt(spec: ToolSpec) -> str:
    """The system-prompt section that describes the functions and the exact output format."""
    tools = json.dumps([f.as_tool() for f in spec.functions], ensure_ascii=False)
    how_many = "exactly one function call" if spec.max_calls == 1 else "one or more function calls"
    lines = [
        "You are an expert in composing functions. You are given a question and a set of possible functions.",
        f"Based on the question, you will need to make {how_many} to achieve the purpose.",
        "If the given question lacks the parameters required by the function, point it out.",
        "",
        "You have access to the following tools:",
        f"<tools>{tools}</tools>",
        "",
        "To call functions, the output MUST strictly adhere to the following format, with correct parameter types:",
        f'{TOOL_CALL_OPEN}[{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}}]'
        f"{TOOL_CALL_CLOSE}",
    ]
    if spec.mode == "named":
        lines.append(f'You MUST call the function "{spec.forced_name}".')
    elif spec.mode == "required":
        lines.append("You MUST call at least one of the functions.")
    else:
        lines.append("If no function call is needed, answer the question directly without a tool call.")
    return "\n".join(lines)


def assistant_prefix(spec: ToolSpec) -> str:
    """The prefill that forces a call: empty when the model may choose (`auto`)."""
    if spec.mode == "named":
        return f'{TOOL_CALL_OPEN}[{{"name": {json.dumps(spec.forced_name)}, "arguments": '
    if spec.mode == "required":
        return f'{TOOL_CALL_OPEN}[{{"name": "'
    return ""


def _arguments_value(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def format_tool_calls(calls: list[ToolCall]) -> str:
    """A previous assistant turn's calls, written back in the format the model is asked to produce."""
    items = [{"name": c.name, "arguments": _arguments_value(c.arguments)} for c in calls]
    return f"{TOOL_CALL_OPEN}{json.dumps(items, ensure_ascii=False)}{TOOL_CALL_CLOSE}"


def format_tool_response(name: str | None, content: str) -> str:
    """One tool result as the model sees it (a user turn made of `<tool_response>` blocks, as in ChatML tool use)."""
    body = json.dumps({"name": name, "content": content} if name else {"content": content}, ensure_ascii=False)
    return f"{TOOL_RESPONSE_OPEN}{body}{TOOL_RESPONSE_CLOSE}"


def json_mode_instruction(schema: dict[str, Any] | None = None) -> str:
    """The instruction for `response_format` json_object / json_schema."""
    text = "Respond only with a single valid JSON object, with no other text before or after it."
    if schema is not None:
        text += "\nThe JSON object must conform to this JSON Schema:\n" + json.dumps(schema, ensure_ascii=False)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Output side: batch parsing


@dataclass
class ParsedOutput:
    """The assistant message made from the model's text: `tool_calls` empty when no (valid) call was found."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)


def _blocks(text: str) -> list[tuple[int, int, str]]:
    """(start, end, inner) of each `<tool_call>` block; a block left open at the end runs to the end."""
    found: list[tuple[int, int, str]] = []
    pos = 0
    while (i := text.find(TOOL_CALL_OPEN, pos)) >= 0:
        j = text.find(TOOL_CALL_CLOSE, i + len(TOOL_CALL_OPEN))
        if j < 0:
            found.append((i, len(text), text[i + len(TOOL_CALL_OPEN):]))
            break
        found.append((i, j + len(TOOL_CALL_CLOSE), text[i + len(TOOL_CALL_OPEN):j]))
        pos = j + len(TOOL_CALL_CLOSE)
    return found


def _outside(text: str, blocks: list[tuple[int, int, str]]) -> str:
    out, pos = [], 0
    for start, end, _ in blocks:
        out.append(text[pos:start])
        pos = end
    out.append(text[pos:])
    return "".join(out)


_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*(?:```)?$", re.DOTALL)


def _decode_leading(text: str) -> Any:
    """The JSON value at the start of `text` (trailing text ignored); raises ValueError."""
    text = text.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1)
    value, _ = json.JSONDecoder().raw_decode(text)
    return value


def _calls_from(value: Any, spec: ToolSpec, new_id: Callable[[], str]) -> list[ToolCall] | None:
    """Calls from a decoded block, or None if any item is not a valid call of a declared function."""
    items = value if isinstance(value, list) else [value]
    calls: list[ToolCall] = []
    for item in items:
        if not isinstance(item, dict):
            return None
        if isinstance(item.get("function"), dict):  # OpenAI-shaped {"type": "function", "function": {...}}
            item = item["function"]
        name = item.get("name")
        if not isinstance(name, str) or name not in spec.names:
            return None
        if spec.mode == "named" and name != spec.forced_name:
            return None
        args = item.get("arguments", item.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append(ToolCall(id=new_id(), name=name, arguments=dumps_compact(args)))
    return calls


def parse_tool_output(text: str, spec: ToolSpec, new_id: Callable[[], str] = new_call_id) -> ParsedOutput:
    """Turn the model's full text (prefill included) into content and calls. Never raises.

    Calls are taken from `<tool_call>` blocks, or from the whole text when it is nothing but a JSON call list. If a
    block does not decode, or names an unknown function, or its arguments are not a JSON object, the whole text is
    returned as content. `content` is the text outside the blocks, stripped, or None when it is empty and there are
    calls (OpenAI's `content: null`).
    """
    blocks = _blocks(text)
    if blocks:
        calls: list[ToolCall] = []
        for _, _, inner in blocks:
            try:
                value = _decode_leading(inner)
            except ValueError:
                return ParsedOutput(content=text)
            got = _calls_from(value, spec, new_id)
            if got is None:
                return ParsedOutput(content=text)
            calls.extend(got)
        outside = _outside(text, blocks).strip()
    else:
        stripped = text.strip()
        if not stripped.startswith(("[", "{", "```")):
            return ParsedOutput(content=text)
        try:
            value = _decode_leading(stripped)
        except ValueError:
            return ParsedOutput(content=text)
        got = _calls_from(value, spec, new_id)
        if not got:
            return ParsedOutput(content=text)
        calls, outside = got, ""
    if spec.max_calls is not None:
        calls = calls[: spec.max_calls]
    if not calls:
        return ParsedOutput(content=outside)
    return ParsedOutput(content=outside or None, tool_calls=calls)


def extract_json_object(text: str) -> str | None:
    """Best-effort repair for JSON mode: the first balanced `{...}` in `text` that decodes as a JSON object."""
    start = text.find("{")
    while start >= 0:
        tracker = JsonObjectTracker()
        tracker.feed(text[start:])
        if tracker.end is not None:
            candidate = text[start:start + tracker.end]
            try:
                if isinstance(json.loads(candidate), dict):
                    return candidate
            except ValueError:
                pass
        start = text.find("{", start + 1)
    return None


class JsonObjectTracker:
    """Follows text as it is generated and says when the top-level JSON object has closed.

    This is the hook for the engine side: once `complete` is true, nothing the model writes can belong to the
    answer, so the generation may be stopped (finish_reason "stop"). It tracks strings and escapes, so braces inside
    strings do not count. It checks balance, not full JSON grammar; the result is decoded afterwards.
    """

    def __init__(self) -> None:
        self._depth = 0
        self._in_string = False
        self._escape = False
        self._seen = 0
        self._started = False
        self.end: int | None = None  # offset just past the closing brace, in the text fed so far

    @property
    def complete(self) -> bool:
        return self.end is not None

    def feed(self, text: str) -> bool:
        if self.end is not None:
            self._seen += len(text)
            return True
        for i, ch in enumerate(text):
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif ch == "\\":
                    self._escape = True
                elif ch == '"':
                    self._in_string = False
                continue
            if ch == '"' and self._started:
                self._in_string = True
            elif ch in "{[":
                self._started = True
                self._depth += 1
            elif ch in "}]" and self._started:
                self._depth -= 1
                if self._depth == 0:
                    self.end = self._seen + i + 1
                    self._seen += len(text)
                    return True
        self._seen += len(text)
        return False


# ---------------------------------------------------------------------------------------------------------------
# Output side: incremental processors (one per choice). The streamed and the non-streamed response both run the
# model's text through one of these, so both say the same thing.


@dataclass
class ProcessedOutput:
    """What is left at the end of a choice: content not yet emitted, and the calls found."""

    content_tail: str
    tool_calls: list[ToolCall] = field(default_factory=list)


class OutputProcessor(Protocol):
    """Turns generated text into emittable content as it arrives, and calls at the end."""

    @property
    def complete(self) -> bool:
        """True once the answer cannot grow any more (the engine may stop generating)."""
        ...

    def feed(self, text: str) -> str:
        """Content that can be emitted now."""
        ...

    def call_deltas(self) -> list[dict[str, Any]]:
        """Tool-call deltas (OpenAI's streamed `tool_calls[]` items) that can be emitted now."""
        ...

    def finish(self) -> ProcessedOutput: ...


class PlainOutput:
    """No tools, no JSON mode: every piece of text is content."""

    complete = False

    def call_deltas(self) -> list[dict[str, Any]]:
        return []

    def __init__(self, prefix: str = "") -> None:
        self._pending = prefix

    def feed(self, text: str) -> str:
        out, self._pending = self._pending + text, ""
        return out

    def finish(self) -> ProcessedOutput:
        out, self._pending = self._pending, ""
        return ProcessedOutput(content_tail=out)


class JsonOutput:
    """JSON mode: content is passed through up to the end of the first complete top-level object, then dropped."""

    def __init__(self, prefix: str = "") -> None:
        self._tracker = JsonObjectTracker()
        self._pending = prefix
        self._emitted = 0

    @property
    def complete(self) -> bool:
        return self._tracker.complete

    def feed(self, text: str) -> str:
        text, self._pending = self._pending + text, ""
        if self._tracker.complete:
            return ""
        before = self._emitted
        self._tracker.feed(text)
        if self._tracker.end is not None:
            text = text[: self._tracker.end - before]
        self._emitted += len(text)
        return text

    def call_deltas(self) -> list[dict[str, Any]]:
        return []

    def finish(self) -> ProcessedOutput:
        return ProcessedOutput(content_tail=self.feed(""))


def _partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag` (text to hold back)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _bare_json_start(head: str) -> Literal["yes", "no", "maybe"]:
    """Does the output open like a bare JSON call list (`[`, `{`, a ```json fence)? "maybe" while too short."""
    if not head:
        return "maybe"
    if head[0] in "[{":
        return "yes"
    if not head.startswith("```"):
        return "maybe" if "```".startswith(head) else "no"
    rest = head[3:]
    if rest.startswith("json"):
        rest = rest[4:]
    elif "json".startswith(rest):
        return "maybe"
    rest = rest.lstrip()
    if not rest:
        return "maybe"
    return "yes" if rest[0] in "[{" else "no"


class ToolCallOutput:
    """Tool mode: content streams until a `<tool_call>` starts (or the text looks like a bare JSON call list);
    from there the text is held and parsed at the end. Unparseable held text is released as content.

    `constrained`: the output follows structured.tool_grammar, so calls are read as they are written
    (call_stream.py) and streamed as OpenAI streams them: each call's head, then its arguments in fragments."""

    def __init__(
        self, spec: ToolSpec, prefix: str = "", new_id: Callable[[], str] = new_call_id, *, constrained: bool = False
    ) -> None:
        self._spec = spec
        self._new_id = new_id
        self._text = ""
        self._emitted = 0
        self._held = False  # a call (or a possible bare JSON call list) has started: nothing more is emitted
        self._pending = prefix
        self._stream = CallStream(new_id) if constrained else None
        self._streamed = 0  # of the held text, characters given to the call stream
        self._deltas: list[dict[str, Any]] = []

    @property
    def complete(self) -> bool:
        """A block has closed (the plan also stops the engine at `</tool_call>`, which removes the tag)."""
        return self._held and TOOL_CALL_CLOSE in self._text[self._emitted:]

    def feed(self, text: str) -> str:
        text, self._pending = self._pending + text, ""
        self._text += text
        if self._held:
            self._stream_calls()
            return ""
        i = self._text.find(TOOL_CALL_OPEN, self._emitted)
        if i >= 0:
            self._held = True
            out = self._text[self._emitted:i]
            self._emitted = i
            self._streamed = i + len(TOOL_CALL_OPEN) + 1  # past `<tool_call>[`
            self._stream_calls()
            return out
        if self._emitted == 0 and self._stream is None:  # constrained: only `<tool_call>` opens a call
            start = _bare_json_start(self._text.lstrip())
            if start == "yes":
                self._held = True
            if start != "no":
                return ""
        end = len(self._text) - _partial_tag_len(self._text, TOOL_CALL_OPEN)
        out = self._text[self._emitted:end]
        self._emitted = max(self._emitted, end)
        return out

    def _stream_calls(self) -> None:
        if self._stream is not None and len(self._text) > self._streamed:
            self._deltas += self._stream.feed(self._text[self._streamed:])
            self._streamed = len(self._text)

    def call_deltas(self) -> list[dict[str, Any]]:
        out, self._deltas = self._deltas, []
        return out

    def finish(self) -> ProcessedOutput:
        self.feed("")
        if self._stream is not None and self._stream.calls:  # as read (one cut by max_tokens: arguments so far)
            calls = [ToolCall(c.id, c.name, c.arguments) for c in self._stream.calls]
            return ProcessedOutput(content_tail="", tool_calls=calls)
        parsed = parse_tool_output(self._text, self._spec, self._new_id)
        rest = self._text[self._emitted:]
        if not parsed.tool_calls:
            if parsed.content == self._text:  # nothing recognised: release what was held, verbatim
                return ProcessedOutput(content_tail=rest)
            return ProcessedOutput(content_tail=_outside(rest, _blocks(rest)))
        blocks = _blocks(rest)
        tail = _outside(rest, blocks) if blocks else ""
        for i, call in enumerate(parsed.tool_calls):  # read at the end: each call whole
            self._deltas.append({"index": i, "id": call.id, "type": "function",
                                 "function": {"name": call.name, "arguments": ""}})
            self._deltas.append({"index": i, "function": {"arguments": call.arguments}})
        return ProcessedOutput(content_tail=tail, tool_calls=parsed.tool_calls)
