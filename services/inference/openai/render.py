"""OpenAI's /v1 responses: `chat.completion` and `text_completion` bodies, their SSE chunks and `data: [DONE]`.

The servicer feeds the engine's GenerationEvents per choice index to a stream renderer and writes each returned
frame as one `google.api.HttpBody` (`text/event-stream`), or collects them into ChoiceResults and writes one
`application/json` body. Chat output goes through the plan's output processor in both cases, so a streamed and a
non-streamed answer carry the same content, tool calls and finish reason.
"""

from __future__ import annotations

import json
import math
import secrets
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..domain import GenerationEvent, TokenLogprob, Usage
from .plan import ChatPlan, CompletionPlan
from .tools import OutputProcessor, ToolCall, extract_json_object
from .validation import ProtocolError

DONE = b"data: [DONE]\n\n"
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"
_ALNUM = string.ascii_letters + string.digits
_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "content_filter": "content_filter"}


def new_id(prefix: str) -> str:
    """`chatcmpl-...` / `cmpl-...`: the prefix and 29 random letters and digits, as OpenAI's ids."""
    return f"{prefix}-" + "".join(secrets.choice(_ALNUM) for _ in range(29))


def json_bytes(obj: Any) -> bytes:
    """Compact UTF-8 JSON, the body of a non-streamed response."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def sse_frame(obj: Any) -> bytes:
    """One server-sent event: `data: <json>` and a blank line."""
    return b"data: " + json_bytes(obj) + b"\n\n"


def error_frame(error: ProtocolError | None = None) -> bytes:
    """An error after the stream has started, sent in-band (the SDK raises it as an APIError); `[DONE]` follows."""
    err = error or ProtocolError(SERVER_ERROR_MESSAGE, status=500, type="server_error")
    return sse_frame(err.body())


def finish_reason(engine_reason: str | None) -> str:
    """The engine's reason as OpenAI spells it ("cancelled" - stopped by the server once the answer was complete -
    is "stop")."""
    return _FINISH.get(engine_reason or "stop", "stop")


def usage_dict(usage: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def _logprob(value: float) -> float:
    return value if math.isfinite(value) else -9999.0  # OpenAI's stand-in for -inf; JSON has no infinities


def chat_token_logprob(tok: TokenLogprob, top: int) -> dict[str, Any]:
    """One `logprobs.content[]` entry: token, logprob, bytes, top_logprobs."""
    return {
        "token": tok.token,
        "logprob": _logprob(tok.logprob),
        "bytes": list(tok.bytes),
        "top_logprobs": [
            {"token": t.token, "logprob": _logprob(t.logprob), "bytes": list(t.bytes)} for t in tok.top_logprobs[:top]
        ],
    }


def chat_logprobs(tokens: Sequence[TokenLogprob], top: int) -> dict[str, Any]:
    return {"content": [chat_token_logprob(t, top) for t in tokens], "refusal": None}


def completion_logprobs(
    tokens: Sequence[TokenLogprob | str | None], top: int, start_offset: int = 0
) -> dict[str, Any]:
    """Legacy `{tokens, token_logprobs, top_logprobs, text_offset}`. `top_logprobs[i]` maps the `top` most likely
    tokens to their logprobs and always holds the chosen token too (so up to top+1 entries, as OpenAI documents).
    A str entry (the first prompt token under echo: nothing before it to score it against) is that token's text
    with null logprobs; None is the same with an unknown text. Offsets count characters of the returned text,
    starting at `start_offset`."""
    out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = start_offset
    for tok in tokens:
        if tok is None or isinstance(tok, str):
            out["tokens"].append(tok or "")
            out["token_logprobs"].append(None)
            out["top_logprobs"].append(None)
            out["text_offset"].append(offset)
            offset += len(tok or "")
            continue
        alternatives = {t.token: _logprob(t.logprob) for t in tok.top_logprobs[:top]}
        alternatives.setdefault(tok.token, _logprob(tok.logprob))
        out["tokens"].append(tok.token)
        out["token_logprobs"].append(_logprob(tok.logprob))
        out["top_logprobs"].append(alternatives)
        out["text_offset"].append(offset)
        offset += len(tok.token)
    return out


@dataclass
class ChoiceResult:
    """One choice's whole generation, collected from its events."""

    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: str | None = None

    def add(self, event: GenerationEvent) -> None:
        self.text += event.text
        self.logprobs.extend(event.logprobs)
        if event.finish_reason is not None:
            self.finish_reason = event.finish_reason
        if event.usage is not None:
            self.usage = event.usage
        if event.error is not None:
            self.error = event.error

    @classmethod
    def collect(cls, events: Sequence[GenerationEvent]) -> ChoiceResult:
        result = cls()
        for event in events:
            result.add(event)
        return result

    @property
    def failed(self) -> bool:
        return self.error is not None or self.finish_reason == "error"


def _total_usage(usages: Sequence[Usage | None], n: int) -> Usage:
    """Prompt tokens once per prompt (choices i*n .. i*n+n-1 share prompt i), completion tokens summed."""
    prompt = completion = 0
    for i, u in enumerate(usages):
        if u is None:
            continue
        completion += u.completion_tokens
        if i % n == 0 or all(x is None for x in usages[i - i % n:i]):
            prompt += u.prompt_tokens
    return Usage(prompt_tokens=prompt, completion_tokens=completion)


def _raise_if_failed(results: Sequence[ChoiceResult]) -> None:
    if any(r.failed for r in results):
        raise ProtocolError(SERVER_ERROR_MESSAGE, status=500, type="server_error")


# ---------------------------------------------------------------------------------------------------------------
# Chat


def _tool_calls_json(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls]


def _final_reason(plan: ChatPlan, calls: Sequence[ToolCall], engine_reason: str | None) -> str:
    """"tool_calls" (legacy: "function_call") when the answer is calls, unless max_tokens cut it ("length", as
    OpenAI says of a call whose arguments were cut)."""
    if calls and engine_reason != "length":
        return "function_call" if plan.tool_spec is not None and plan.tool_spec.legacy else "tool_calls"
    return finish_reason(engine_reason)


def chat_message(plan: ChatPlan, text: str) -> tuple[dict[str, Any], list[ToolCall]]:
    """The assistant message for one choice's generated text (the plan's prefill is prepended by its processor)."""
    processor = plan.output_processor()
    content = processor.feed(text)
    rest = processor.finish()
    content += rest.content_tail
    calls = rest.tool_calls
    if not calls and plan.tool_spec is None and plan.response_format.type != "text":
        try:
            json.loads(content)
        except ValueError:
            content = extract_json_object(content) or content  # best-effort repair; left as is when none found
    message: dict[str, Any] = {"role": "assistant", "content": (content.strip() or None) if calls else content}
    if calls and plan.tool_spec is not None and plan.tool_spec.legacy:
        message["function_call"] = {"name": calls[0].name, "arguments": calls[0].arguments}
    elif calls:
        message["tool_calls"] = _tool_calls_json(calls)
    message["refusal"] = None
    return message, calls


def _body(
    prefix: str, obj: str, choices: list[dict[str, Any]], usage: Usage, model: str, completion_id: str | None,
    created: int | None, system_fingerprint: str | None,
) -> dict[str, Any]:
    """The envelope both non-streamed bodies share."""
    return {
        "id": completion_id or new_id(prefix),
        "object": obj,
        "created": int(time.time()) if created is None else created,
        "model": model,
        "choices": choices,
        "usage": usage_dict(usage),
        "system_fingerprint": system_fingerprint,
    }


def render_chat_completion(
    plan: ChatPlan,
    results: Sequence[ChoiceResult],
    *,
    model: str,
    completion_id: str | None = None,
    created: int | None = None,
    system_fingerprint: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """The non-streamed `chat.completion` body. A failed choice makes the whole request a 500 (ProtocolError)."""
    _raise_if_failed(results)
    choices = []
    for index, result in enumerate(results):
        message, calls = chat_message(plan, result.text)
        choices.append({
            "index": index,
            "message": message,
            "logprobs": chat_logprobs(result.logprobs, plan.base.top_logprobs) if plan.base.logprobs else None,
            "finish_reason": _final_reason(plan, calls, result.finish_reason),
        })
    total = usage or _total_usage([r.usage for r in results], len(results) or 1)
    return _body("chatcmpl", "chat.completion", choices, total, model, completion_id, created, system_fingerprint)


@dataclass
class _ChatChoice:
    processor: OutputProcessor
    logprobs: list[TokenLogprob] = field(default_factory=list)
    usage: Usage | None = None
    finished: bool = False


class _StreamEnd:
    """How both SSE renderers end: the usage chunk and `[DONE]`, or an in-band error and `[DONE]`."""

    object_name: str  # the `object` of every chunk
    plan: Any
    id: str
    created: int
    model: str
    system_fingerprint: str | None
    _choices: list[Any]
    _closed: bool

    def _open(self, plan: Any, model: str, completion_id: str, created: int | None,
              system_fingerprint: str | None, choices: list[Any]) -> None:
        self.plan = plan
        self.id = completion_id
        self.model = model
        self.created = int(time.time()) if created is None else created
        self.system_fingerprint = system_fingerprint
        self._choices = choices
        self._closed = False

    @property
    def finished(self) -> bool:
        """Every choice has ended."""
        return all(c.finished for c in self._choices)

    def _chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None, final: bool = False) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.system_fingerprint,
            "choices": choices,
        }
        if self.plan.include_usage:
            body["usage"] = usage_dict(usage) if final and usage is not None else None
        return sse_frame(body)

    def close(self, usage: Usage | None = None) -> list[bytes]:
        """The usage chunk (with include_usage) and `data: [DONE]`. `usage` defaults to the choices' total."""
        if self._closed:
            return []
        self._closed = True
        frames = []
        if self.plan.include_usage:
            total = usage or _total_usage([c.usage for c in self._choices], self.plan.n)
            frames.append(self._chunk([], total, final=True))
        frames.append(DONE)
        return frames

    def fail(self, error: ProtocolError | None = None) -> list[bytes]:
        """An in-band error and `data: [DONE]`; nothing is written after it."""
        if self._closed:
            return []
        self._closed = True
        return [error_frame(error), DONE]


class ChatCompletionStream(_StreamEnd):
    """Renders one chat request's stream: `start()`, then `feed(index, event)` per engine event, then `close()`.

    Each call returns the SSE frames to write, in order. Chunks follow OpenAI: a first chunk per choice with
    `delta: {role: "assistant", content: ""}`, content deltas, tool call deltas (`index`, `id`, `type`, name, then
    the arguments), a last chunk per choice with an empty delta and `finish_reason`; then, with
    `stream_options.include_usage`, a chunk with `choices: []` and `usage` (other chunks carry `usage: null`);
    then `data: [DONE]`. Choices interleave by index as their events arrive.
    """

    object_name = "chat.completion.chunk"

    def __init__(
        self,
        plan: ChatPlan,
        *,
        model: str,
        completion_id: str | None = None,
        created: int | None = None,
        system_fingerprint: str | None = None,
    ) -> None:
        self._open(plan, model, completion_id or new_id("chatcmpl"), created, system_fingerprint,
                   [_ChatChoice(plan.output_processor()) for _ in range(plan.n)])

    def should_stop(self, index: int) -> bool:
        """The choice's answer is complete (JSON object closed, tool call closed): the engine may stop it."""
        return self._choices[index].processor.complete

    def _delta(self, index: int, delta: dict[str, Any], reason: str | None = None) -> bytes:
        choice = self._choices[index]
        logprobs = None
        if self.plan.base.logprobs and (choice.logprobs or reason is None):
            logprobs = chat_logprobs(choice.logprobs, self.plan.base.top_logprobs)
            choice.logprobs = []
        return self._chunk([{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}])

    def _call_frames(self, index: int, deltas: list[dict[str, Any]]) -> list[bytes]:
        """Tool-call deltas as chunks (legacy `functions`: as `function_call` deltas, name first)."""
        if self.plan.tool_spec is not None and self.plan.tool_spec.legacy:
            return [self._delta(index, {"function_call": {"name": d["function"]["name"], "arguments": ""}
                                        if "id" in d else {"arguments": d["function"]["arguments"]}})
                    for d in deltas if d["index"] == 0]
        return [self._delta(index, {"tool_calls": [d]}) for d in deltas]

    def start(self) -> list[bytes]:
        """The role chunk of every choice."""
        return [
            self._chunk([{
                "index": i,
                "delta": {"role": "assistant", "content": "", "refusal": None},
                "logprobs": None,
                "finish_reason": None,
            }])
            for i in range(self.plan.n)
        ]

    def feed(self, index: int, event: GenerationEvent) -> list[bytes]:
        """Frames for one engine event of choice `index`. An event with an error ends the whole stream in-band."""
        if self._closed or self._choices[index].finished:
            return []
        if event.error is not None or event.finish_reason == "error":
            return self.fail()
        choice = self._choices[index]
        choice.logprobs.extend(event.logprobs)
        frames: list[bytes] = []
        text = choice.processor.feed(event.text)
        if text:
            frames.append(self._delta(index, {"content": text}))
        frames += self._call_frames(index, choice.processor.call_deltas())
        if event.finish_reason is None:
            return frames
        choice.finished = True
        choice.usage = event.usage
        rest = choice.processor.finish()
        if rest.content_tail:
            frames.append(self._delta(index, {"content": rest.content_tail}))
        frames += self._call_frames(index, choice.processor.call_deltas())
        reason = _final_reason(self.plan, rest.tool_calls, event.finish_reason)
        frames.append(self._delta(index, {}, reason))
        return frames



# ---------------------------------------------------------------------------------------------------------------
# Completions


def render_completion(
    plan: CompletionPlan,
    results: Sequence[ChoiceResult],
    *,
    model: str,
    prompt_texts: Sequence[str] = (),
    prompt_logprobs: Sequence[Sequence[TokenLogprob | str | None]] = (),
    completion_id: str | None = None,
    created: int | None = None,
    system_fingerprint: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    """The non-streamed `text_completion` body; `results[i]` is choice i (prompt i // n). With echo, pass each
    prompt's text (and, with logprobs, each prompt's token logprobs, None for the first token)."""
    _raise_if_failed(results)
    choices = []
    for index, result in enumerate(results):
        p = index // plan.n
        prefix = prompt_texts[p] if plan.echo and p < len(prompt_texts) else ""
        logprobs = None
        if plan.logprobs is not None:
            tokens: list[TokenLogprob | str | None] = []
            if plan.echo and p < len(prompt_logprobs):
                tokens.extend(prompt_logprobs[p])
            tokens.extend(result.logprobs)
            logprobs = completion_logprobs(tokens, plan.logprobs)
        choices.append({
            "text": prefix + result.text,
            "index": index,
            "logprobs": logprobs,
            "finish_reason": finish_reason(result.finish_reason),
        })
    total = usage or _total_usage([r.usage for r in results], plan.n)
    return _body("cmpl", "text_completion", choices, total, model, completion_id, created, system_fingerprint)


@dataclass
class _CompletionChoice:
    offset: int = 0
    usage: Usage | None = None
    finished: bool = False


class CompletionStream(_StreamEnd):
    """Renders one completions request's stream, like ChatCompletionStream: `start()` (the echoed prompts),
    `feed(index, event)`, `close()`. Every chunk is a `text_completion` object with one choice."""

    object_name = "text_completion"

    def __init__(
        self,
        plan: CompletionPlan,
        *,
        model: str,
        prompt_texts: Sequence[str] = (),
        prompt_logprobs: Sequence[Sequence[TokenLogprob | str | None]] = (),
        completion_id: str | None = None,
        created: int | None = None,
        system_fingerprint: str | None = None,
    ) -> None:
        self._open(plan, model, completion_id or new_id("cmpl"), created, system_fingerprint,
                   [_CompletionChoice() for _ in range(plan.choice_count)])
        self._prompt_texts = list(prompt_texts)
        self._prompt_logprobs = [list(p) for p in prompt_logprobs]

    def _text(self, index: int, text: str, tokens: Sequence[TokenLogprob | str | None], reason: str | None) -> bytes:
        choice = self._choices[index]
        logprobs = None
        if self.plan.logprobs is not None and (tokens or reason is None):
            logprobs = completion_logprobs(tokens, self.plan.logprobs, choice.offset)
        choice.offset += len(text)
        return self._chunk([{"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}])

    def start(self) -> list[bytes]:
        """With echo, one chunk per choice carrying its prompt; otherwise nothing."""
        if not self.plan.echo:
            return []
        frames = []
        for index in range(self.plan.choice_count):
            p = index // self.plan.n
            text = self._prompt_texts[p] if p < len(self._prompt_texts) else ""
            tokens = self._prompt_logprobs[p] if p < len(self._prompt_logprobs) else []
            frames.append(self._text(index, text, tokens, None))
        return frames

    def feed(self, index: int, event: GenerationEvent) -> list[bytes]:
        if self._closed or self._choices[index].finished:
            return []
        if event.error is not None or event.finish_reason == "error":
            return self.fail()
        frames = []
        if event.text or event.logprobs:
            frames.append(self._text(index, event.text, event.logprobs, None))
        if event.finish_reason is not None:
            choice = self._choices[index]
            choice.finished = True
            choice.usage = event.usage
            frames.append(self._text(index, "", [], finish_reason(event.finish_reason)))
        return frames

