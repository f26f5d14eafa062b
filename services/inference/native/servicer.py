"""NativeService: the native local inference API (`/api/v1/generate`, `.../stream`, `/models`, `/batch/generate`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from google.protobuf import struct_pb2

from llmlab.inference.v1 import inference_service_pb2 as common_pb
from llmlab.inference.v1 import native_service_pb2 as pb
from llmlab.inference.v1 import native_service_pb2_grpc as pb_grpc
from llmlab.runtime import DomainError, InvalidArgument, validation_error
from llmlab.runtime.context import current_request_id

from ..artifacts import QUANTIZATION_ALIASES, canonical_quantization
from ..backends import BackendRequest
from ..domain import GenerationEvent, SamplingParams
from ..generation import merge_streams
from ..models.manager import ModelManager
from ..models.registry import ModelRecord
from ..sampling_fields import sampling_from_proto
from ..usage import UsageRecorder

DEFAULT_MAX_TOKENS = 256
MAX_BATCH_ITEMS = 64


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f}GB"


def sampling(msg: Any, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> SamplingParams:
    """The native request fields (generate, stream and batch items share them) as SamplingParams."""
    return sampling_from_proto(msg, {"temperature": 0.7, "max_tokens": default_max_tokens})


def usage_pb(event: GenerationEvent) -> common_pb.Usage:
    u = event.usage
    if u is None:
        return common_pb.Usage()
    return common_pb.Usage(prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                           total_tokens=u.total_tokens)


class NativeServicer(pb_grpc.NativeServiceServicer):
    """The native `/api/v1` endpoints. A plain `prompt` is an instruction to a chat model: it goes through the
    chat template."""

    def __init__(self, models: ModelManager, usage: UsageRecorder) -> None:
        self._models = models
        self._usage = usage

    async def _request(self, model: str, prompt: str, params: SamplingParams, suffix: str = "") -> tuple[
            ModelRecord, Any, BackendRequest]:
        if not prompt.strip():
            raise validation_error("prompt", prompt, "is required")
        record, backend = await self._models.resolve(model or self._models.settings.default_model)
        request = BackendRequest(f"{current_request_id()}{suffix}", record, params,
                                 messages=[{"role": "user", "content": prompt}])
        return record, backend, request

    async def _run(self, model: str, prompt: str, params: SamplingParams, suffix: str = "") -> tuple[
            ModelRecord, str, GenerationEvent, float]:
        record, backend, request = await self._request(model, prompt, params, suffix)
        started = time.perf_counter()
        text, final = "", GenerationEvent()
        async for _, event in merge_streams([backend.generate(request)]):
            text += event.text
            if event.finish_reason is not None:
                final = event
        latency = time.perf_counter() - started
        await self._usage.record(endpoint="/api/v1/generate", model=record, backend=record.backend, finals=[final],
                                 latency_ms=latency * 1000)
        return record, text, final, latency

    async def NativeGenerate(self, request: pb.NativeGenerateRequest, context: Any) -> pb.NativeGenerateResponse:
        if request.stream:
            raise InvalidArgument(
                "stream: true is served by POST /api/v1/generate/stream", reason="USE_STREAM_ENDPOINT",
                field_violations=[("stream", "use /api/v1/generate/stream")],
            )
        record, text, final, latency = await self._run(request.model, request.prompt, sampling(request))
        return pb.NativeGenerateResponse(text=text, usage=usage_pb(final), latency=round(latency, 3), model=record.id,
                                         finish_reason=final.finish_reason or "stop")

    async def NativeGenerateStream(
        self, request: pb.NativeGenerateStreamRequest, context: Any
    ) -> AsyncIterator[pb.NativeGenerateStreamResponse]:
        record, backend, breq = await self._request(request.model, request.prompt, sampling(request))
        started = time.perf_counter()
        events = merge_streams([backend.generate(breq)])
        first = await anext(events, None)  # refusals (overloaded, too long) keep their HTTP status
        pending = [first] if first is not None else []
        final = GenerationEvent()
        try:
            while True:
                item = pending.pop() if pending else await anext(events, None)
                if item is None:
                    break
                _, event = item
                if event.finish_reason is None:
                    if event.text:
                        yield pb.NativeGenerateStreamResponse(token=event.text, finished=False)
                    continue
                final = event
                out = pb.NativeGenerateStreamResponse(
                    token=event.text, finished=True, finish_reason=event.finish_reason, usage=usage_pb(event),
                    latency=round(time.perf_counter() - started, 3),
                )
                if event.finish_reason == "error":
                    out.error.CopyFrom(pb.NativeError(code="GENERATION_FAILED", message="Generation failed",
                                                      details=event.error or ""))
                yield out
        except DomainError as exc:  # after the first message only the stream itself can carry the failure
            yield pb.NativeGenerateStreamResponse(
                finished=True, finish_reason="error",
                error=pb.NativeError(code=exc.reason, message=exc.message, details=""),
            )
            return
        finally:
            await events.aclose()
        await self._usage.record(endpoint="/api/v1/generate/stream", model=record, backend=record.backend,
                                 finals=[final], latency_ms=(time.perf_counter() - started) * 1000)

    async def NativeBatchGenerate(
        self, request: pb.NativeBatchGenerateRequest, context: Any
    ) -> pb.NativeBatchGenerateResponse:
        items = list(request.requests)
        if not 1 <= len(items) <= MAX_BATCH_ITEMS:
            raise validation_error("requests", len(items), f"must hold between 1 and {MAX_BATCH_ITEMS} requests")
        for i, item in enumerate(items):  # validate everything before generating anything
            if not item.prompt.strip():
                raise validation_error(f"requests[{i}].prompt", item.prompt, "is required")
            sampling(item)

        async def one(i: int, item: pb.NativeBatchItem) -> pb.NativeBatchResult:
            try:
                _, text, final, latency = await self._run(item.model, item.prompt, sampling(item), f"-{i}")
            except DomainError as exc:
                return pb.NativeBatchResult(finish_reason="error",
                                            error=pb.NativeError(code=exc.reason, message=exc.message))
            return pb.NativeBatchResult(text=text, usage=usage_pb(final), latency=round(latency, 3),
                                        finish_reason=final.finish_reason or "stop")

        # Every item joins the engine's running batch at once: continuous batching does the rest.
        results = await asyncio.gather(*(one(i, item) for i, item in enumerate(items)))
        return pb.NativeBatchGenerateResponse(results=results)

    async def NativeListModels(self, request: pb.NativeListModelsRequest, context: Any) -> pb.NativeListModelsResponse:
        records = await self._models.registry.list(limit=1000)
        return pb.NativeListModelsResponse(models=[self._native_model(r) for r in records])

    async def NativeLoadModel(self, request: pb.NativeLoadModelRequest, context: Any) -> pb.NativeLoadModelResponse:
        quantization = None
        if request.quantization.strip():
            quantization = canonical_quantization(request.quantization)
            if quantization is None:
                raise validation_error(
                    "quantization", request.quantization,
                    f"must be one of {', '.join(sorted(QUANTIZATION_ALIASES))} (q4_0 = int4, q8_0 = int8, f32 = fp32)",
                )
        loaded = await self._models.load(request.model_name, quantization=quantization, prefer_gpu=request.prefer_gpu)
        return pb.NativeLoadModelResponse(
            model=self._native_model(loaded.record),
            load_time=round(loaded.load_seconds + loaded.build_seconds, 3) if loaded.load_seconds else 0.0,
            warnings=loaded.warnings,
            build_time=round(loaded.build_seconds, 3),
        )

    def _native_model(self, record: ModelRecord) -> pb.NativeModel:
        view = self._models.describe(record)
        model = pb.NativeModel(name=record.id, format=view.format, loaded=view.loaded,
                               memory_usage=_gb(view.memory_bytes))
        _value(model.size, _gb(view.size_bytes) if view.size_bytes is not None else None)
        _value(model.quantization, view.quantization)
        _value(model.device, view.device)
        return model


def _value(field: struct_pb2.Value, value: str | None) -> None:
    if value is None:
        field.null_value = struct_pb2.NULL_VALUE
    else:
        field.string_value = value
