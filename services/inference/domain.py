"""The inference service's internal vocabulary: what a generation asks for and what it yields, per token."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Grammar:
    """A constraint on a generation's output, enforced token by token by the engine (engine/constraint.py).

    kind "json_schema": `text` is a JSON Schema (as JSON text) the output must be an instance of; kind "lark": `text`
    is a grammar in llguidance's Lark dialect (which embeds JSON schemas with `%json {...}`). A schema's layout
    and leniency are llguidance's top-level `x-guidance` options inside it (openai/structured.py sets them)."""

    kind: str
    text: str


@dataclass
class SamplingParams:
    """Per-request sampling. Every request in a batch keeps its own (continuous batching never mixes them)."""

    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0  # nucleus mass, (0, 1]
    top_k: int = 0  # 0 = disabled
    max_tokens: int = 16  # completion tokens at most
    frequency_penalty: float = 0.0  # OpenAI semantics, -2..2, subtracted per occurrence count
    presence_penalty: float = 0.0  # OpenAI semantics, -2..2, subtracted once if present
    repetition_penalty: float = 1.0  # HF/CTRL semantics, > 0; 1 = off
    stop: list[str] = field(default_factory=list)  # stop sequences; the matched text is not returned
    stop_token_ids: list[int] = field(default_factory=list)  # extra stop tokens besides the model's EOS
    ignore_eos: bool = False
    seed: int | None = None  # same seed + same params + same prompt -> same text
    logprobs: bool = False  # report the chosen token's logprob
    top_logprobs: int = 0  # and this many alternatives, 0..20
    grammar: Grammar | None = None  # constrained decoding: every token keeps the output inside this grammar


_INT64_MIN = -(2**63)


def fan_out(params: SamplingParams, n: int) -> list[SamplingParams]:
    """The n choices of one request: seeds seed, seed+1, ... (wrapped into int64, as the APIs carry it), each
    with its own copies of the lists."""

    def seed(i: int) -> int | None:
        return None if params.seed is None else (params.seed + i - _INT64_MIN) % 2**64 + _INT64_MIN

    return [replace(params, seed=seed(i), stop=list(params.stop), stop_token_ids=list(params.stop_token_ids))
            for i in range(n)]


@dataclass
class TopLogprob:
    """One alternative token at a position."""

    token: str
    logprob: float
    bytes: list[int]


@dataclass
class TokenLogprob:
    """The chosen token at a position, with its alternatives (OpenAI `logprobs.content[]`)."""

    token: str
    logprob: float
    bytes: list[int]
    top_logprobs: list[TopLogprob] = field(default_factory=list)


@dataclass
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class GenerationEvent:
    """A step of a streamed generation. The last event has `finish_reason` set, `usage` and the timings."""

    text: str = ""  # new text since the previous event (may be "" while a possible stop sequence is held back)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None  # "stop" (EOS or stop sequence), "length", "cancelled", "error"
    usage: Usage | None = None
    time_to_first_token_ms: float | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass
class GenerationRequest:
    """One sequence to generate. `n > 1` is fanned out by the caller into n requests (seeds seed, seed+1, ...)."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    priority: int = 0  # INTERACTIVE or BATCH (engine/engine.py "Priority")


# Priority classes of generation (engine/engine.py "Priority"): live `/v1` traffic, and the lines of OpenAI batches.
INTERACTIVE, BATCH = 0, 1
# The class of the request being served: set by the OpenAI servicer from the caller's `x-llmlab-priority`
# metadata (only internal callers can send it: the gateway drops client-sent x-llmlab-* headers), read by the
# in-process backend when it hands the request to the engine.
generation_priority: contextvars.ContextVar[int] = contextvars.ContextVar("llmlab_generation_priority",
                                                                          default=INTERACTIVE)

