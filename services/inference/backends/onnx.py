"""The in-process backend: our continuous-batching engine over the model's ONNX artifact, with its tokenizer and
chat template (the only code that touches them on the serving path)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ..domain import GenerationEvent, GenerationRequest
from ..engine import Engine, EngineError
from ..errors import engine_error
from ..models.registry import ModelRecord
from .base import BackendRequest, BackendStatus, ModelLimits


class OnnxBackend:
    """One registered `onnx` model held by an engine of this replica."""

    kind = "onnx"
    native_chat = False

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
        gen = GenerationRequest(request.request_id, self.prompt_ids(request), request.params)
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

    async def status(self) -> BackendStatus:
        return BackendStatus(backend="onnx", model=self.model.id, ready=self.engine.running)

    async def close(self) -> None:
        await self.engine.stop()
