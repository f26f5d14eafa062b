"""The in-process backend: our continuous-batching engine over the model's ONNX artifact, with its tokenizer and
chat template (the only code that touches them on the serving path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..domain import GenerationEvent, GenerationRequest, TokenLogprob, generation_priority
from ..engine import Engine, EngineError
from ..engine.scoring import ScoredToken
from ..errors import engine_error
from ..models.registry import ModelRecord
from .base import BackendRequest, BackendStatus, ModelLimits


@dataclass
class Score:
    """A continuation's tokens with their logprobs and ids, the context's length, whether greedy decoding writes it."""

    tokens: list[TokenLogprob]
    token_ids: list[int]
    context_tokens: int
    greedy: bool


class OnnxBackend:
    """One registered `onnx` model held by an engine of this replica."""

    kind = "onnx"
    native_chat = False
    supports_grammar = True  # the engine enforces SamplingParams.grammar (engine/constraint.py)

    def __init__(self, model: ModelRecord, engine: Engine) -> None:
        self.model = model
        self.engine = engine

    def limits(self) -> ModelLimits:
        context = self.engine.max_seq_len
        return ModelLimits(context_length=context, max_output_tokens=min(self.model.max_tokens, context),
                           vocab_size=self.engine.tokenizer.vocab_size)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        return self.engine.tokenizer.render_chat(messages, add_generation_prompt=add_generation_prompt)

    def tokenize(self, text: str) -> list[int]:
        return self.engine.tokenizer.encode(text)

    def detokenize(self, token_ids: list[int]) -> str:
        return self.engine.tokenizer.decode(token_ids)

    def prompt_ids(self, request: BackendRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if request.messages is not None:
            return self.tokenize(self.render_chat(request.messages))
        return self.tokenize(request.prompt or "")

    async def generate(self, request: BackendRequest) -> AsyncIterator[GenerationEvent]:
        gen = GenerationRequest(request.request_id, self.prompt_ids(request), request.params,
                                priority=generation_priority.get())
        try:
            self.engine.validate(gen)
        except EngineError as exc:
            raise engine_error(exc) from exc
        stream = self.engine.generate(gen)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def prompt_logprobs(self, token_ids: list[int], top: int) -> list[TokenLogprob | str]:
        """Each prompt token's logprob given the ones before it, with `top` alternatives; the first token, which
        nothing before it scores, as its text alone."""
        scored = await self._score(token_ids, top)
        return [self.engine.tokenizer.token_text(token_ids[0]), *(self.engine.token_logprob(s) for s in scored)]

    async def score(self, context_ids: list[int], continuation_ids: list[int], top: int) -> Score:
        """The continuation's tokens scored after the context (after the document-start token when it is empty)."""
        context = context_ids or [self._document_start()]
        scored = (await self._score(context + continuation_ids, top))[len(context) - 1 :]
        return Score([self.engine.token_logprob(s) for s in scored], [s.token_id for s in scored], len(context),
                     all(s.greedy for s in scored))

    async def _score(self, token_ids: list[int], top: int) -> list[ScoredToken]:
        try:
            return await self.engine.score(token_ids, top)
        except EngineError as exc:
            raise engine_error(exc) from exc

    def _document_start(self) -> int:
        tok = self.engine.tokenizer
        bos = tok.token_to_id(tok.bos_token) if tok.bos_token else None
        return bos if bos is not None else min(self.engine.eos_token_ids, default=0)

    async def status(self) -> BackendStatus:
        return BackendStatus(backend="onnx", model=self.model.id, ready=self.engine.running)

    async def close(self) -> None:
        await self.engine.stop()
