"""Generation plans: a validated request and the serving model's limits -> the prompt, n, per-choice sampling and
how to read the output back (tools, JSON mode). Pure: the servicer passes the backend's chat template.

    plan = build_chat_plan(req, backend.render_chat, limits)   # or None: the backend applies tools itself
    params = plan.sampling_params(prompt_tokens)                # n SamplingParams; max_tokens checked
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from llmlab.sampling import BOUNDS

from ..domain import Grammar, SamplingParams, fan_out
from ..engine.chat_template import chatml
from .protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CommonRequest,
    CompletionRequest,
    PromptInput,
    ResponseFormat,
)
from .structured import chat_grammar
from .tools import (
    TOOL_CALL_CLOSE,
    JsonOutput,
    OutputProcessor,
    PlainOutput,
    ToolCallOutput,
    ToolSpec,
    assistant_prefix,
    format_tool_calls,
    format_tool_response,
    json_mode_instruction,
    tools_system_prompt,
)
from .validation import ProtocolError

__all__ = ["ChatPlan", "CompletionPlan", "EngineLimits", "build_chat_plan", "build_completion_plan", "chatml",
           "render_conversation"]

# ---------------------------------------------------------------------------------------------------------------
# Generation plans


ChatTemplate = Callable[[list[dict[str, str]], bool], str]
"""Renders `[{"role", "content"}]` (roles system, user, assistant) to prompt text; the bool is
add_generation_prompt. The served model's own template (ChatML for SmolLM2) is passed by the servicer."""


@dataclass(frozen=True)
class EngineLimits:
    """What the serving model allows and supports; the plan refuses what it cannot honour."""

    context_length: int
    max_output_tokens: int | None = None
    max_n: int = int(BOUNDS["n"].hi or 1)  # OpenAI allows 128; each choice runs as its own sequence
    max_choices: int = 128  # completions: prompts x n
    vocab_size: int | None = None
    supports_logit_bias: bool = False  # SamplingParams has no field for it yet
    supports_min_tokens: bool = False  # idem
    supports_prompt_logprobs: bool = False  # echo + logprobs needs the prompt's logprobs from the engine
    supports_media: bool = False  # image/audio/file message parts
    supports_grammar: bool = False  # constrained decoding: response_format and tools enforced (structured.py)


def _check_limits(req: CommonRequest, limits: EngineLimits) -> None:
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
    req: CommonRequest, *, logprobs: bool, top_logprobs: int, extra_stop: Sequence[str] = (),
    grammar: Grammar | None = None,
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
        grammar=grammar,
    )


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
        return fan_out(replace(self.base, max_tokens=max_tokens), self.n)


@dataclass
class ChatPlan(_Plan):
    """How to run one chat request: the prompt text (template applied, prefill appended), n, sampling, and how
    to read the output back (tools, legacy functions, JSON mode)."""

    prompt: str = ""
    assistant_prefix: str = ""  # prefill, already at the end of `prompt`; it counts as the assistant's text
    tool_spec: ToolSpec | None = None
    response_format: ResponseFormat = field(default_factory=ResponseFormat)
    # For a backend that applies chat itself (native_chat): OpenAI's messages, tools, tool_choice, response_format.
    messages: list[dict[str, Any]] | None = None
    native: dict[str, Any] = field(default_factory=dict)

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
            return ToolCallOutput(self.tool_spec, self.assistant_prefix, constrained=self.base.grammar is not None)
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


def _plan_fields(req: CommonRequest, base: SamplingParams, limits: EngineLimits) -> dict[str, Any]:
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


def build_chat_plan(
    req: ChatCompletionRequest, chat_template: ChatTemplate | None, limits: EngineLimits
) -> ChatPlan:
    """The prompt and sampling for a model whose prompt we render with `chat_template`. Tools go into the system
    prompt (tool_choice "none" leaves them out); "required" and a named choice prefill the call; json_object /
    json_schema add an instruction and prefill `{` (unless tools are active, which then take precedence).

    `chat_template` None: the backend applies chat, tools and JSON mode itself (an OpenAI-compatible upstream);
    the plan then carries OpenAI's messages, tools, tool_choice and response_format for it, and still reads the
    output back (the backend returns tool calls as `<tool_call>` blocks)."""
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
    top = req.top_logprobs or 0
    if chat_template is None:
        base = _base_params(req, logprobs=req.logprobs, top_logprobs=top)
        return ChatPlan(
            **_plan_fields(req, base, limits),
            tool_spec=spec,
            response_format=req.response_format,
            messages=openai_messages(req.messages),
            native=_native_options(req),
        )
    # With constrained decoding the grammar enforces the answer (and writes the `{` a JSON answer starts with);
    # without, the prefill and the instructions steer the model and the output is read back leniently.
    grammar = chat_grammar(req.response_format, spec) if limits.supports_grammar else None
    turns = render_conversation(req.messages)
    sections: list[str] = []
    prefix = ""
    if spec is not None:
        sections.append(tools_system_prompt(spec))
        prefix = assistant_prefix(spec)
    if req.response_format.type != "text":
        sections.append(json_mode_instruction(req.response_format.schema))
        if spec is None and grammar is None:
            prefix = "{"
    if sections:
        turns = _with_system(turns, "\n\n".join(sections))
    prompt = chat_template(turns, True) + prefix

    base = _base_params(req, logprobs=req.logprobs, top_logprobs=top, grammar=grammar,
                        extra_stop=(TOOL_CALL_CLOSE,) if spec is not None and grammar is None else ())
    return ChatPlan(
        **_plan_fields(req, base, limits),
        prompt=prompt,
        assistant_prefix=prefix,
        tool_spec=spec,
        response_format=req.response_format,
    )


def openai_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """The request's messages as OpenAI JSON again (text parts joined), for an upstream that takes them."""
    out: list[dict[str, Any]] = []
    for msg in messages:
        m: dict[str, Any] = {"role": msg.role, "content": msg.content}
        if msg.name is not None:
            m["name"] = msg.name
        if msg.tool_calls:
            m["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                for c in msg.tool_calls
            ]
        if msg.function_call is not None:
            m["function_call"] = {"name": msg.function_call.name, "arguments": msg.function_call.arguments}
        if msg.tool_call_id is not None:
            m["tool_call_id"] = msg.tool_call_id
        out.append(m)
    return out


def _native_options(req: ChatCompletionRequest) -> dict[str, Any]:
    """tools, tool_choice and response_format as OpenAI JSON (legacy `functions` are sent as tools)."""
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [fn.as_tool() for fn in req.tools]
    choice = req.tool_choice
    if choice is not None and req.tools:
        out["tool_choice"] = (
            {"type": "function", "function": {"name": choice.name}} if choice.mode == "named" else choice.mode
        )
    rf = req.response_format
    if rf.type == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif rf.type == "json_schema":
        schema: dict[str, Any] = {"name": rf.name}
        if rf.schema is not None:
            schema["schema"] = rf.schema
        if rf.strict is not None:
            schema["strict"] = rf.strict
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


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


