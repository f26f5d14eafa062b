"""InferenceService: the typed gRPC API other services call (experiments -> Generate, metrics -> logprobs, ops)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from typing import Any

import psutil
from google.protobuf import json_format

from llmlab.inference.v1 import inference_service_pb2 as pb
from llmlab.inference.v1 import inference_service_pb2_grpc as pb_grpc
from llmlab.runtime import InvalidArgument
from llmlab.runtime.context import current_request_id
from llmlab.runtime.envelope import iso
from llmlab.sampling import check_sampling

from ..backends import BackendRequest
from ..backends.onnx import OnnxBackend
from ..domain import GenerationEvent, SamplingParams, Usage, fan_out
from ..domain import TokenLogprob as EngineLogprob
from ..generation import merge_streams
from ..models.manager import ModelManager
from ..models.registry import ModelRecord
from ..sampling_fields import optional_field, sampling_from_proto
from ..usage import UsageRecorder


def sampling_params(msg: pb.SamplingParams) -> tuple[SamplingParams, int]:
    """The proto's sampling (unset fields take OpenAI's defaults) and n, validated."""
    n = optional_field(msg, "n", 1)
    check_sampling({"n": n}, prefix="sampling.")
    return sampling_from_proto(msg, {"max_tokens": 256}, prefix="sampling."), n


def logprobs_pb(tokens: list[EngineLogprob]) -> list[pb.TokenLogprob]:
    return [
        pb.TokenLogprob(
            token=t.token, logprob=t.logprob, bytes=bytes(t.bytes),
            top_logprobs=[pb.TopLogprob(token=a.token, logprob=a.logprob) for a in t.top_logprobs],
        )
        for t in tokens
    ]


def record_pb(r: ModelRecord) -> pb.ModelRecord:
    out = pb.ModelRecord(
        id=r.id, uuid=r.uuid, name=r.name, provider=r.provider, model_identifier=r.model_identifier,
        version=r.version, base_model=r.base_model, status=r.status, description=r.description,
        model_size=r.model_size, category=r.category, capabilities=r.capabilities, languages=r.languages,
        context_window=r.context_window, max_output_tokens=r.max_tokens,
        input_price_per_1k=r.input_cost_per_token * 1000, output_price_per_1k=r.output_cost_per_token * 1000,
        backend=r.backend, created_at=iso(r.created_at), updated_at=iso(r.updated_at),
    )
    out.config.update(r.config or {})
    if r.parameters is not None:
        out.parameters.update(r.parameters)
    return out


class InferenceServicer(pb_grpc.InferenceServiceServicer):
    """Generation for other services, with the same engine, sampling and usage accounting as the public APIs."""

    def __init__(self, models: ModelManager, usage: UsageRecorder) -> None:
        self._models = models
        self._usage = usage

    async def _prepare(
        self, request: pb.GenerateRequest | pb.GenerateStreamRequest
    ) -> tuple[ModelRecord, list, list[pb.TokenLogprob]]:
        if bool(request.prompt) == bool(request.messages):
            raise InvalidArgument("give exactly one of prompt and messages", reason="VALIDATION_ERROR",
                                  field_violations=[("prompt", "exactly one of prompt and messages")])
        if request.tools:
            raise InvalidArgument("tools are served by /v1/chat/completions", reason="UNSUPPORTED_PARAMETER",
                                  field_violations=[("tools", "not supported by this RPC")])
        params, n = sampling_params(request.sampling)
        record, backend = await self._models.resolve(request.model or self._models.settings.default_model)
        messages = [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in request.messages] or None
        requests = [
            BackendRequest(f"{current_request_id()}-{i}", record, p,
                           prompt=request.prompt if messages is None else None, messages=messages)
            for i, p in enumerate(fan_out(params, n))
        ]
        prompt_logprobs: list[pb.TokenLogprob] = []
        if request.prompt_logprobs:
            if not isinstance(backend, OnnxBackend):
                raise InvalidArgument(f"model {record.id!r} is served by {backend.kind!r}, which cannot score tokens",
                                      reason="UNSUPPORTED_PARAMETER",
                                      field_violations=[("prompt_logprobs", "scoring needs the in-process engine")])
            ids = backend.prompt_ids(requests[0])
            scored = await backend.prompt_logprobs(ids, params.top_logprobs)
            prompt_logprobs = logprobs_pb([t for t in scored if not isinstance(t, str)])
            for token, token_id in zip(prompt_logprobs, ids[1:], strict=True):
                token.token_id = token_id
        return record, [backend.generate(r) for r in requests], prompt_logprobs

    async def Generate(self, request: pb.GenerateRequest, context: Any) -> pb.GenerateResponse:
        record, streams, prompt_logprobs = await self._prepare(request)
        started = time.perf_counter()
        choices = [pb.GenerationChoice(index=i) for i in range(len(streams))]
        finals: list[GenerationEvent] = []
        async for index, event in merge_streams(streams):
            choices[index].text += event.text
            choices[index].logprobs.extend(logprobs_pb(event.logprobs))
            if event.finish_reason is not None:
                choices[index].finish_reason = event.finish_reason
                finals.append(event)
        latency_ms = (time.perf_counter() - started) * 1000
        usage = await self._usage.record(endpoint="InferenceService/Generate", model=record, backend=record.backend,
                                         finals=finals, latency_ms=latency_ms)
        ttft = [e.time_to_first_token_ms for e in finals if e.time_to_first_token_ms is not None]
        return pb.GenerateResponse(
            id=current_request_id(), model=record.id, choices=choices,
            usage=pb.Usage(prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens),
            latency_ms=round(latency_ms, 3), time_to_first_token_ms=round(min(ttft), 3) if ttft else 0.0,
            backend=record.backend, prompt_logprobs=prompt_logprobs,
        )

    async def GenerateStream(
        self, request: pb.GenerateStreamRequest, context: Any
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        record, streams, prompt_logprobs = await self._prepare(request)
        started = time.perf_counter()
        finals: list[GenerationEvent] = []
        async for index, event in merge_streams(streams):
            out = pb.GenerateStreamResponse(id=current_request_id(), model=record.id, index=index, delta=event.text,
                                            logprobs=logprobs_pb(event.logprobs), prompt_logprobs=prompt_logprobs)
            prompt_logprobs = []  # first message only
            if event.finish_reason is not None:
                finals.append(event)
                out.finish_reason = event.finish_reason
                if event.usage is not None:
                    out.usage.CopyFrom(pb.Usage(prompt_tokens=event.usage.prompt_tokens,
                                                completion_tokens=event.usage.completion_tokens,
                                                total_tokens=event.usage.total_tokens))
                out.latency_ms = event.latency_ms or 0.0
                out.time_to_first_token_ms = event.time_to_first_token_ms or 0.0
            yield out
        await self._usage.record(endpoint="InferenceService/GenerateStream", model=record, backend=record.backend,
                                 finals=finals, latency_ms=(time.perf_counter() - started) * 1000)
        yield pb.GenerateStreamResponse(id=current_request_id(), model=record.id, done=True)

    async def GetEngineStatus(self, request: pb.GetEngineStatusRequest, context: Any) -> pb.GetEngineStatusResponse:
        loaded = list(self._models.loaded.values())
        out = pb.GetEngineStatusResponse(
            backend="onnxruntime",
            model_loaded=bool(loaded),
            memory_used_bytes=psutil.Process().memory_info().rss,
            memory_total_bytes=psutil.virtual_memory().total,
            max_batch_size=self._models.settings.max_batch,
        )
        for m in loaded:
            stats = m.engine.stats()
            out.active_requests += stats.active
            out.queued_requests += stats.queued
            out.loaded_models.append(pb.LoadedModel(
                model=m.record.id, backend="onnx", device=m.device, format="onnx", quantization=m.quantization,
                memory_bytes=m.memory_bytes, loaded_at=iso(m.loaded_at),
            ))
        return out

    async def Score(self, request: pb.ScoreRequest, context: Any) -> pb.ScoreResponse:
        texts = bool(request.context or request.continuation)
        ids = bool(request.context_token_ids or request.continuation_token_ids)
        if texts == ids or not (request.continuation or request.continuation_token_ids):
            raise InvalidArgument("give a continuation, as text or as token ids (with its context the same way)",
                                  reason="VALIDATION_ERROR",
                                  field_violations=[("continuation", "one continuation, as text or as token ids")])
        top = optional_field(request, "top_logprobs", 0)
        check_sampling({"top_logprobs": top})
        record, backend = await self._models.resolve(request.model or self._models.settings.default_model)
        if not isinstance(backend, OnnxBackend):
            raise InvalidArgument(f"model {record.id!r} is served by {backend.kind!r}, which cannot score tokens",
                                  reason="UNSUPPORTED_PARAMETER",
                                  field_violations=[("model", "scoring needs the in-process engine")])
        if texts:
            context_ids = backend.tokenize(request.context) if request.context else []
            continuation_ids = backend.tokenize(request.continuation)
        else:
            context_ids, continuation_ids = list(request.context_token_ids), list(request.continuation_token_ids)
        started = time.perf_counter()
        score = await backend.score(context_ids, continuation_ids, top)
        latency_ms = (time.perf_counter() - started) * 1000
        total = sum(t.logprob for t in score.tokens)
        count = len(score.tokens)
        final = GenerationEvent(finish_reason="stop", usage=Usage(score.context_tokens + count, 0),
                                latency_ms=latency_ms)
        await self._usage.record(endpoint="InferenceService/Score", model=record, backend=record.backend,
                                 finals=[final], latency_ms=latency_ms)
        tokens = logprobs_pb(score.tokens)
        for token, token_id in zip(tokens, score.token_ids, strict=True):
            token.token_id = token_id
        return pb.ScoreResponse(
            model=record.id, tokens=tokens, log_likelihood=total,
            perplexity=math.exp(-total / count) if count else 0.0, greedy=score.greedy,
            context_tokens=score.context_tokens, continuation_tokens=count, latency_ms=round(latency_ms, 3),
        )

    async def GetModel(self, request: pb.GetModelRequest, context: Any) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=record_pb(await self._models.record(request.id)))
