"""OpenAIService: `/v1/models`, `/v1/completions`, `/v1/chat/completions` - proto and HTTP bodies in, OpenAI JSON out.

The trace of `POST /v1/chat/completions`: Envoy transcodes it to CreateChatCompletion with the body as HttpBody ->
protocol.parse_chat_request (validation) -> one cached model lookup (models.manager) -> plan.build_chat_plan with
the backend's chat template and limits -> Backend.generate per choice (backends/) -> render (one JSON body or SSE
frames). This module only translates and runs that sequence.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format

from llmlab.inference.v1 import openai_service_pb2 as pb
from llmlab.inference.v1 import openai_service_pb2_grpc as pb_grpc
from llmlab.runtime import DomainError, Internal, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from llmlab.runtime.context import current_request_id

from ..backends import Backend, BackendRequest
from ..domain import BATCH, INTERACTIVE, GenerationEvent, TokenLogprob, Usage, generation_priority
from ..generation import merge_streams
from ..models.manager import ModelManager
from ..models.registry import ModelNotFound, ModelRecord
from ..usage import UsageRecorder
from . import render
from .models import ModelInfo, ModelPricing, list_models, parse_model_query, render_model
from .parsing import parse_chat_request, parse_completion_request
from .plan import ChatPlan, CompletionPlan, EngineLimits, build_chat_plan, build_completion_plan
from .validation import ProtocolError, model_not_found

JSON = "application/json"
SSE = "text/event-stream"
_STATUS_ERRORS: dict[int, type[DomainError]] = {
    400: InvalidArgument, 404: NotFound, 429: ResourceExhausted, 503: Unavailable,
}


def protocol_error(err: ProtocolError) -> DomainError:
    """An OpenAI-style refusal as a domain error the gateway renders as `{"error": {message, type, param, code}}`."""
    cls = _STATUS_ERRORS.get(err.status, Internal if err.status >= 500 else InvalidArgument)
    metadata = {"type": err.type}
    if err.param is not None:
        metadata["param"] = err.param
    status = None if cls is not InvalidArgument or err.status == 400 else err.status
    return cls(err.message, reason=(err.code or "").upper(), metadata=metadata, http_status=status)


def model_info(record: ModelRecord) -> ModelInfo:
    return ModelInfo(
        id=record.id,
        name=record.name,
        provider=record.provider,
        category=record.category,
        created_at=record.created_at,
        updated_at=record.updated_at,
        description=record.description,
        context_length=record.context_window,
        max_output_tokens=record.max_tokens,
        pricing=ModelPricing(
            input_tokens=record.input_cost_per_token * 1000, output_tokens=record.output_cost_per_token * 1000
        ),
        capabilities=tuple(record.capabilities),
        languages=tuple(record.languages),
        size=record.size_class,
        owned_by=record.owned_by,
    )


def engine_limits(backend: Backend) -> EngineLimits:
    limits = backend.limits()
    return EngineLimits(context_length=limits.context_length, max_output_tokens=limits.max_output_tokens,
                        vocab_size=limits.vocab_size, supports_prompt_logprobs=hasattr(backend, "prompt_logprobs"),
                        supports_grammar=getattr(backend, "supports_grammar", False))


async def _prompt_only(prompt_tokens: int) -> AsyncIterator[GenerationEvent]:
    """A choice of `max_tokens: 0` (completions): nothing generated, the prompt counted."""
    yield GenerationEvent(finish_reason="length", usage=Usage(prompt_tokens, 0), latency_ms=0.0)


def _body(data: bytes, content_type: str) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=content_type, data=data)


Streams = list[AsyncGenerator[GenerationEvent, None]]


def _priority(context: Any) -> int:
    """The engine class of this request: BATCH when an internal caller (the batch workers) says so in the
    `x-llmlab-priority` metadata, which clients cannot send (the gateway drops x-llmlab-* headers)."""
    metadata = dict(context.invocation_metadata() or ()) if context is not None else {}
    return BATCH if metadata.get("x-llmlab-priority") == "batch" else INTERACTIVE


@dataclass
class _Run:
    """One request ready to run: its plan, a backend stream per choice, and how to render the answer."""

    plan: ChatPlan | CompletionPlan
    streams: Streams
    choices: int
    renderer: Callable[[], Any]  # the SSE renderer, for `stream: true`
    body: Callable[[list[render.ChoiceResult], Usage], dict[str, Any]]
    before: Callable[[], Awaitable[None]] | None = None  # work before generating (echo's prompt logprobs)


class OpenAIServicer(pb_grpc.OpenAIServiceServicer):
    """The OpenAI-compatible surface over the model manager's backends."""

    def __init__(self, models: ModelManager, usage: UsageRecorder, moderations: Any = None) -> None:
        self._models = models
        self._usage = usage
        self._moderations = moderations  # moderation.service.Moderations

    # -- models ---------------------------------------------------------------------------------------------------
    async def ListOpenAIModels(self, request: pb.ListOpenAIModelsRequest, context: Any) -> pb.ListOpenAIModelsResponse:
        try:
            query = parse_model_query(
                request.category, request.size, request.provider,
                request.page if request.HasField("page") else None,
                request.per_page if request.HasField("per_page") else None,
            )
        except ProtocolError as err:
            raise protocol_error(err) from None
        records = await self._models.registry.list(limit=1000)
        listing = list_models([model_info(r) for r in records], query)
        return json_format.ParseDict(listing, pb.ListOpenAIModelsResponse(), ignore_unknown_fields=True)

    async def GetOpenAIModel(self, request: pb.GetOpenAIModelRequest, context: Any) -> pb.OpenAIModel:
        try:
            record = await self._models.record(request.id)
        except ModelNotFound:
            raise protocol_error(model_not_found(request.id)) from None
        return json_format.ParseDict(render_model(model_info(record)), pb.OpenAIModel(), ignore_unknown_fields=True)

    async def _resolve(self, model: str) -> tuple[ModelRecord, Backend]:
        try:
            return await self._models.resolve(model)
        except ModelNotFound:
            raise protocol_error(model_not_found(model)) from None

    # -- generation -----------------------------------------------------------------------------------------------
    async def CreateChatCompletion(
        self, request: pb.CreateChatCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        generation_priority.set(_priority(context))
        async for frame in self._serve(request.http_body.data, "/v1/chat/completions", parse_chat_request, self._chat):
            yield frame

    async def CreateCompletion(
        self, request: pb.CreateCompletionRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        generation_priority.set(_priority(context))
        async for frame in self._serve(request.http_body.data, "/v1/completions", parse_completion_request,
                                       self._completion):
            yield frame

    async def CreateModeration(self, request: pb.CreateModerationRequest, context: Any
                               ) -> pb.CreateModerationResponse:
        try:
            return await self._moderations.moderate(request)
        except ProtocolError as err:
            raise protocol_error(err) from None

    async def _serve(
        self, data: bytes, endpoint: str, parse: Callable[[bytes], Any],
        prepare: Callable[[Any, ModelRecord, Backend], _Run],
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """Both endpoints: parse -> one model lookup -> plan and backend streams -> SSE frames or one JSON body."""
        try:
            req = parse(data)
        except ProtocolError as err:
            raise protocol_error(err) from None
        record, backend = await self._resolve(req.model)
        try:
            run = prepare(req, record, backend)
        except ProtocolError as err:
            raise protocol_error(err) from None
        if run.before is not None:
            await run.before()
        if run.plan.stream:
            async for frame in self._stream(run.renderer(), run.streams, record, backend.kind, endpoint):
                yield frame
            return
        results, finals, latency_ms = await self._collect(run.streams, run.choices)
        usage = await self._usage.record(endpoint=endpoint, model=record, backend=backend.kind, finals=finals,
                                         latency_ms=latency_ms)
        try:
            body = run.body(results, usage)
        except ProtocolError as err:
            raise protocol_error(err) from None
        yield _body(render.json_bytes(body), JSON)

    def _chat(self, req: Any, record: ModelRecord, backend: Backend) -> _Run:
        """The plan and one backend stream per choice. A backend that renders its own chat (an OpenAI-compatible
        upstream) gets the messages, tools, tool_choice and response_format; the others get the prompt our plan
        rendered with their template, tokenized once here to size max_tokens."""
        limits = engine_limits(backend)
        rid = current_request_id()
        if backend.native_chat:
            plan = build_chat_plan(req, None, limits)
            streams = [
                backend.generate(BackendRequest(f"{rid}-{i}", record, p, messages=plan.messages, **plan.native))
                for i, p in enumerate(plan.sampling_params(0))
            ]
        else:
            plan = build_chat_plan(req, backend.render_chat, limits)
            ids = backend.tokenize(plan.prompt)
            streams = [
                backend.generate(BackendRequest(f"{rid}-{i}", record, p, prompt=plan.prompt, prompt_token_ids=ids))
                for i, p in enumerate(plan.sampling_params(len(ids) if ids is not None else 0))
            ]
        return _Run(
            plan, streams, plan.n,
            renderer=lambda: render.ChatCompletionStream(plan, model=req.model),
            body=lambda results, usage: render.render_chat_completion(plan, results, model=req.model, usage=usage),
        )

    def _completion(self, req: Any, record: ModelRecord, backend: Backend) -> _Run:
        """The plan, each prompt's text (for echo) and one backend stream per choice (prompt index * n + i)."""
        plan = build_completion_plan(req, engine_limits(backend))
        streams: Streams = []
        prompt_texts: list[str] = []
        prompt_ids: list[list[int]] = []
        prompt_logprobs: list[list[TokenLogprob | str | None]] = []  # filled by `before` for echo with logprobs
        for p_index, prompt in enumerate(plan.prompts):
            if prompt.token_ids is not None:
                ids: list[int] | None = list(prompt.token_ids)
                text = backend.detokenize(prompt.token_ids)
                if text is None:
                    raise ProtocolError("Invalid 'prompt': token-id prompts are not supported by this model.",
                                        "prompt", "unsupported_parameter")
            else:
                text = prompt.text or ""
                ids = backend.tokenize(text)
            prompt_texts.append(text)
            prompt_ids.append(ids or [])
            if not (ids if ids is not None else text):
                raise ProtocolError("Invalid 'prompt': the prompt is empty.", "prompt", "invalid_value")
            for i, params in enumerate(plan.sampling_params(len(ids) if ids is not None else 0)):
                rid = f"{current_request_id()}-{p_index * plan.n + i}"
                if params.max_tokens == 0:
                    streams.append(_prompt_only(len(ids) if ids is not None else 0))
                    continue
                streams.append(backend.generate(BackendRequest(rid, record, params, prompt=text,
                                                               prompt_token_ids=ids)))

        async def score_prompts() -> None:
            scorer = getattr(backend, "prompt_logprobs")  # noqa: B009 - only backends that score reach here
            for ids in prompt_ids:
                prompt_logprobs.append(await scorer(ids, plan.logprobs or 0))

        return _Run(
            plan, streams, plan.choice_count,
            renderer=lambda: render.CompletionStream(plan, model=req.model, prompt_texts=prompt_texts,
                                                     prompt_logprobs=prompt_logprobs),
            body=lambda results, usage: render.render_completion(plan, results, model=req.model,
                                                                 prompt_texts=prompt_texts,
                                                                 prompt_logprobs=prompt_logprobs, usage=usage),
            before=score_prompts if plan.echo and plan.logprobs is not None else None,
        )

    # -- helpers --------------------------------------------------------------------------------------------------
    async def _collect(self, streams: Streams, choices: int) -> tuple[list[render.ChoiceResult],
                                                                       list[GenerationEvent], float]:
        started = time.perf_counter()
        results = [render.ChoiceResult() for _ in range(choices)]
        finals: list[GenerationEvent] = []
        async for index, event in merge_streams(streams):
            results[index].add(event)
            if event.finish_reason is not None:
                finals.append(event)
        return results, finals, (time.perf_counter() - started) * 1000

    async def _stream(
        self, renderer: Any, streams: Streams, record: ModelRecord, backend: str, endpoint: str
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """SSE frames. Errors before the first frame keep their HTTP status; later ones are sent in-band."""
        started = time.perf_counter()
        finals: list[GenerationEvent] = []
        events = merge_streams(streams)
        try:
            first = await anext(events, None)  # the engine refuses (overloaded, too long) before any frame is sent
        except ProtocolError as err:
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
