"""OpenAIService: `/v1/models`, `/v1/completions`, `/v1/chat/completions` - proto and HTTP bodies in, OpenAI JSON out.

Validation, prompt building and rendering live in openai_protocol/openai_render; this module only runs the plan:
it resolves the model, fans the choices out to the backend, and writes one `application/json` body or SSE frames.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format

from llmlab.inference.v1 import openai_service_pb2 as pb
from llmlab.inference.v1 import openai_service_pb2_grpc as pb_grpc
from llmlab.runtime import DomainError, Internal, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from llmlab.runtime.context import current_request_id

from . import openai_protocol as oai
from . import openai_render as render
from .backends import BackendRequest
from .generation import merge_streams
from .models import ModelManager, OnnxBackend
from .registry import ModelNotFound, ModelRecord
from .types import GenerationEvent, GenerationRequest
from .usage import UsageRecorder

JSON = "application/json"
SSE = "text/event-stream"
_STATUS_ERRORS: dict[int, type[DomainError]] = {
    400: InvalidArgument, 404: NotFound, 429: ResourceExhausted, 503: Unavailable,
}


def protocol_error(err: oai.ProtocolError) -> DomainError:
    """An OpenAI-style refusal as a domain error the gateway renders as `{"error": {message, type, param, code}}`."""
    cls = _STATUS_ERRORS.get(err.status, Internal if err.status >= 500 else InvalidArgument)
    metadata = {"type": err.type}
    if err.param is not None:
        metadata["param"] = err.param
    status = None if cls is not InvalidArgument or err.status == 400 else err.status
    return cls(err.message, reason=(err.code or "").upper(), metadata=metadata, http_status=status)


def model_info(record: ModelRecord) -> oai.ModelInfo:
    return oai.ModelInfo(
        id=record.id,
        name=record.name,
        provider=record.provider,
        category=record.category,
        created_at=record.created_at,
        updated_at=record.updated_at,
        description=record.description,
        context_length=record.context_window,
        max_output_tokens=record.max_tokens,
        pricing=oai.ModelPricing(
            input_tokens=record.input_cost_per_token * 1000, output_tokens=record.output_cost_per_token * 1000
        ),
        capabilities=tuple(record.capabilities),
        languages=tuple(record.languages),
        size=record.size_class,
        owned_by=record.owned_by,
    )


def _body(data: bytes, content_type: str) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=content_type, data=data)


class OpenAIServicer(pb_grpc.OpenAIServiceServicer):
    """The OpenAI-compatible surface over the model manager's backends."""

    def __init__(self, models: ModelManager, usage: UsageRecorder) -> None:
        self._models = models
        self._usage = usage

    # -- models ---------------------------------------------------------------------------------------------------
    async def ListOpenAIModels(self, request: pb.ListOpenAIModelsRequest, context: Any) -> pb.ListOpenAIModelsResponse:
        try:
            query = oai.parse_model_query(
                request.category, request.size, request.provider,
                request.page if request.HasField("page") else None,
                request.per_page if request.HasField("per_page") else None,
            )
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        records = await self._models.registry.list(limit=1000)
        listing = oai.list_models([model_info(r) for r in records], query)
        return json_format.ParseDict(listing, pb.ListOpenAIModelsResponse(), ignore_unknown_fields=True)

    async def GetOpenAIModel(self, request: pb.GetOpenAIModelRequest, context: Any) -> pb.OpenAIModel:
        record = await self._record(request.id)
        return json_format.ParseDict(oai.render_model(model_info(record)), pb.OpenAIModel(), ignore_unknown_fields=True)

    async def _record(self, model: str) -> ModelRecord:
        try:
            return await self._models.record(model)
        except ModelNotFound:
            raise protocol_error(oai.model_not_found(model)) from None

    # -- generation -----------------------------------------------------------------------------------------------
    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        try:
            req = oai.parse_chat_request(request.http_body.data)
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        record = await self._record(req.model)
        _, backend = await self._models.backend(record.id)
        try:
            if isinstance(backend, OnnxBackend):
                tok = backend.engine.tokenizer
                plan = oai.build_chat_plan(
                    req, lambda turns, gen: tok.render_chat(turns, add_generation_prompt=gen), self._limits(backend)
                )
                ids = tok.encode(plan.prompt)
                params = plan.sampling_params(len(ids))
                streams = [backend.engine.generate(GenerationRequest(f"{current_request_id()}-{i}", ids, p))
                           for i, p in enumerate(params)]
            else:
                plan = oai.build_chat_plan(req, oai.chatml, oai.EngineLimits(context_length=record.context_window))
                params = plan.sampling_params(0)
                messages = [{"role": t["role"], "content": t["content"]} for t in oai.render_conversation(req.messages)]
                streams = [backend.generate(BackendRequest(f"{current_request_id()}-{i}", record, p, messages=messages))
                           for i, p in enumerate(params)]
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        backend_name = getattr(backend, "backend", record.backend)
        if plan.stream:
            renderer = render.ChatCompletionStream(plan, model=req.model)
            async for frame in self._stream(renderer, streams, record, backend_name, "/v1/chat/completions"):
                yield frame
            return
        results, finals, latency_ms = await self._collect(streams, plan.n)
        usage = await self._usage.record(endpoint="/v1/chat/completions", model=record, backend=backend_name,
                                         finals=finals, latency_ms=latency_ms)
        try:
            body = render.render_chat_completion(plan, results, model=req.model, usage=usage)
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        yield _body(render.json_bytes(body), JSON)

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        try:
            req = oai.parse_completion_request(request.http_body.data)
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        record = await self._record(req.model)
        _, backend = await self._models.backend(record.id)
        if not isinstance(backend, OnnxBackend):
            raise protocol_error(oai.ProtocolError(
                f"The model '{record.id}' is served by a remote backend; use /v1/chat/completions with it.",
                "model", "unsupported_model"))
        tok = backend.engine.tokenizer
        try:
            plan = oai.build_completion_plan(req, self._limits(backend))
            streams = []
            prompt_texts = []
            for p_index, prompt in enumerate(plan.prompts):
                ids = list(prompt.token_ids) if prompt.token_ids is not None else tok.encode(prompt.text or "")
                prompt_texts.append(prompt.text if prompt.text is not None else tok.decode(ids))
                if not ids:
                    raise oai.ProtocolError("Invalid 'prompt': the prompt is empty.", "prompt", "invalid_value")
                for i, params in enumerate(plan.sampling_params(len(ids))):
                    rid = f"{current_request_id()}-{p_index * plan.n + i}"
                    streams.append(backend.engine.generate(GenerationRequest(rid, ids, params)))
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        if plan.stream:
            renderer = render.CompletionStream(plan, model=req.model, prompt_texts=prompt_texts)
            async for frame in self._stream(renderer, streams, record, "onnx", "/v1/completions"):
                yield frame
            return
        results, finals, latency_ms = await self._collect(streams, plan.choice_count)
        usage = await self._usage.record(endpoint="/v1/completions", model=record, backend="onnx",
                                         finals=finals, latency_ms=latency_ms)
        try:
            body = render.render_completion(plan, results, model=req.model, prompt_texts=prompt_texts, usage=usage)
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        yield _body(render.json_bytes(body), JSON)

    # -- helpers --------------------------------------------------------------------------------------------------
    def _limits(self, backend: OnnxBackend) -> oai.EngineLimits:
        engine = backend.engine
        return oai.EngineLimits(
            context_length=engine.max_seq_len,
            max_output_tokens=min(backend.model.max_tokens, engine.max_seq_len),
            vocab_size=engine.tokenizer.vocab_size,
        )

    async def _collect(self, streams: list, choices: int) -> tuple[list[render.ChoiceResult], list[GenerationEvent],
                                                                   float]:
        started = time.perf_counter()
        results = [render.ChoiceResult() for _ in range(choices)]
        finals: list[GenerationEvent] = []
        async for index, event in merge_streams(streams):
            results[index].add(event)
            if event.finish_reason is not None:
                finals.append(event)
        return results, finals, (time.perf_counter() - started) * 1000

    async def _stream(
        self, renderer: Any, streams: list, record: ModelRecord, backend: str, endpoint: str
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """SSE frames. Errors before the first frame keep their HTTP status; later ones are sent in-band."""
        started = time.perf_counter()
        finals: list[GenerationEvent] = []
        events = merge_streams(streams)
        try:
            first = await anext(events, None)  # the engine refuses (overloaded, too long) before any frame is sent
        except oai.ProtocolError as err:
            raise protocol_error(err) from None
        for frame in renderer.start():
            yield _body(frame, SSE)
        try:
            pending = [first] if first is not None else []
            while True:
                item = pending.pop() if pending else await anext(events, None)
                if item is None:
                    break
                index, event = item
                if event.finish_reason is not None:
                    finals.append(event)
                for frame in renderer.feed(index, event):
                    yield _body(frame, SSE)
        except DomainError:
            for frame in renderer.fail():
                yield _body(frame, SSE)
            return
        finally:
            await events.aclose()
        usage = await self._usage.record(endpoint=endpoint, model=record, backend=backend, finals=finals,
                                         latency_ms=(time.perf_counter() - started) * 1000)
        for frame in renderer.close(usage):
            yield _body(frame, SSE)
