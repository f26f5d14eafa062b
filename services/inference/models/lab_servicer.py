"""ModelService's lab family: the registry as `/api/models...` sees it (the `{success, data, meta}` envelope,
docs/api.md "lab"), and the one-shot generation of `/api/models/{id}/generate` through a model's backend."""

from __future__ import annotations

import time
from typing import Any

from llmlab.inference.v1 import model_service_pb2 as pb
from llmlab.runtime import Internal, InvalidArgument, validation_error
from llmlab.runtime.context import current_request_id
from llmlab.runtime.envelope import iso, meta, utcnow, value
from llmlab.sampling import check_sampling

from ..backends import BackendRequest
from ..domain import GenerationEvent, SamplingParams
from ..generation import merge_streams
from ..usage import UsageRecorder
from .catalogue import (
    LAB_SAMPLING,
    capabilities_list,
    check_generation_defaults,
    in_process,
    optional,
    registry_error,
    require_name,
    serving_from,
    struct_field,
)
from .manager import ModelManager
from .registry import ModelRecord, NewModel, slugify

# `/api/models/{id}/generate`: what neither the body nor the model's stored `parameters` give takes these values.
LAB_DEFAULTS = {"temperature": 0.7, "max_length": 100, "top_p": 0.9, "top_k": 50}

_LAB_LIST_STATUS = {"available": "active"}  # the lab list says "active"; the other states keep their canonical name


def lab_list_status(status: str) -> str:
    """The status of a `GET /api/models` item: "active" for a servable model, other states as stored."""
    return _LAB_LIST_STATUS.get(status, status)


def lab_item_status(status: str) -> str:
    """The status of a single model (`GET /api/models/{id}`, `POST /api/models`): upper case, "AVAILABLE", ..."""
    return status.upper()



def lab_text(prompt: str, answer: str) -> str:
    """The generated `text`: the prompt followed by what the model wrote. A chat model often restates the prompt
    before continuing it; then its answer already is the prompt followed by the continuation."""
    head = answer.lstrip()
    if prompt.strip() and head.lower().startswith(prompt.strip().lower()):
        return head
    joiner = "" if not answer or prompt[-1:].isspace() or answer[:1].isspace() else " "
    return prompt + joiner + answer



def lab_model(r: ModelRecord, *, detail: bool = False) -> pb.LabModel:
    """One LabModel shape for the list and the single-model view; `parameters` only on the latter."""
    model = pb.LabModel(
        id=r.id, name=r.name, provider=r.provider, base_model=r.base_model,
        status=lab_item_status(r.status) if detail else lab_list_status(r.status),
        description=r.description, model_size=r.model_size, capabilities=r.capabilities,
        cost_per_token=r.cost_per_token, max_tokens=r.max_tokens, context_window=r.context_window,
        created_at=iso(r.created_at), updated_at=iso(r.updated_at),
    )  # fmt: skip
    if detail:
        model.parameters.CopyFrom(value(r.parameters))
    return model




class LabModels:
    """The lab family's RPCs of ModelService (composed with the research family's in servicer.py)."""

    _models: ModelManager
    _usage: UsageRecorder

    async def ListLabModels(self, request: pb.ListLabModelsRequest, context: Any) -> pb.ListLabModelsResponse:
        records = await self._models.registry.list()
        return pb.ListLabModelsResponse(
            success=True, data=pb.ListLabModelsData(models=[lab_model(r) for r in records]), meta=meta()
        )

    async def GetLabModel(self, request: pb.GetLabModelRequest, context: Any) -> pb.GetLabModelResponse:
        record = await self._models.registry.get(request.id)
        return pb.GetLabModelResponse(success=True, data=lab_model(record, detail=True), meta=meta())

    async def CreateLabModel(self, request: pb.CreateLabModelRequest, context: Any) -> pb.CreateLabModelResponse:
        name = require_name("name", request.name)
        base_model = require_name("base_model", request.base_model)
        provider = require_name("provider", request.provider, 64) if request.HasField("provider") else "local"
        model_id = request.id if request.HasField("id") else slugify(name)
        if not model_id:
            raise validation_error("name", name, "must contain a letter or digit (the id is derived from it)")
        parameters = struct_field(request, "parameters") or {}
        backend_obj = parameters.pop("backend", None)
        check_generation_defaults("parameters", parameters)

        base = await self._models.registry.find(base_model)
        serving = serving_from(backend_obj, provider, "parameters.backend")
        if serving is None and base is not None:  # a model derived from a registered one is served the same way
            config = dict(base.backend_config)
            if base.backend == "openai":
                config.setdefault("model", base.upstream_model)
            serving = {
                "backend": base.backend,
                "backend_config": config,
                "format": base.format,
                "quantization": base.quantization,
            }

        context_window = optional(request, "context_window")
        context_window = context_window if context_window is not None else (base.context_window if base else 2048)
        max_tokens = optional(request, "max_tokens")
        max_tokens = max_tokens if max_tokens is not None else min(base.max_tokens if base else 2048, context_window)
        if context_window > 0 and max_tokens > context_window:
            raise validation_error("max_tokens", max_tokens, "must not exceed context_window")
        capabilities = (
            capabilities_list("capabilities", list(request.capabilities))
            if request.capabilities
            else ["text-generation"]
        )
        cost = optional(request, "cost_per_token")
        new = NewModel(
            id=model_id, name=name, provider=provider, base_model=base_model, description=request.description,
            model_size=request.model_size, capabilities=capabilities,
            category="chat" if "chat" in capabilities else "text-generation",
            cost_per_token=cost if cost is not None else 0.0, max_tokens=max_tokens, context_window=context_window,
            model_identifier=base.upstream_model if base and base.backend == "openai" else base_model,
            parameters=parameters or None, **(serving or in_process()),
        )  # fmt: skip
        new.status = "available" if self._models.servable(new.backend, model_id, base) else "unavailable"
        try:
            record = await self._models.registry.create(new)
        except InvalidArgument as exc:
            raise registry_error(exc, {**new.__dict__, "id": model_id}) from None
        return pb.CreateLabModelResponse(
            success=True,
            data=pb.CreateLabModelData(
                id=record.id,
                name=record.name,
                base_model=record.base_model,
                status=lab_item_status(record.status),
                message="Model created successfully",
            ),
            meta=meta(),
        )

    async def GenerateLabText(self, request: pb.GenerateLabTextRequest, context: Any) -> pb.GenerateLabTextResponse:
        if not request.prompt.strip():
            raise validation_error("prompt", request.prompt, "is required")
        record = await self._models.record(request.id)
        stored = record.parameters or {}
        used: dict[str, Any] = {}
        for key, default in LAB_DEFAULTS.items():
            given = optional(request, key)
            used[key] = given if given is not None else stored.get(key, default)
        check_sampling(used, aliases=LAB_SAMPLING)
        if used["max_length"] > record.max_tokens:
            raise validation_error(
                "max_length", used["max_length"], f"must be at most {record.max_tokens} for '{record.id}'"
            )
        params = SamplingParams(
            temperature=float(used["temperature"]),
            top_p=float(used["top_p"]),
            top_k=int(used["top_k"]),
            max_tokens=int(used["max_length"]),
        )

        serving, backend = await self._models.serving(record)
        breq = BackendRequest(
            current_request_id(), serving, params, messages=[{"role": "user", "content": request.prompt}]
        )
        started = time.perf_counter()
        text, final = "", GenerationEvent()
        try:
            async for _, event in merge_streams([backend.generate(breq)]):
                text += event.text
                if event.finish_reason is not None:
                    final = event
        except InvalidArgument as exc:
            if exc.reason != "CONTEXT_LENGTH_EXCEEDED":
                raise
            # The engine names OpenAI's field; the lab family calls the same limit `max_length`.
            raise InvalidArgument(
                exc.message,
                reason=exc.reason,
                details={"field": "max_length", "value": params.max_tokens, "constraint": exc.message},
                field_violations=[("max_length", exc.message)],
            ) from None
        latency = time.perf_counter() - started
        await self._usage.record(
            endpoint="/api/models/{id}/generate",
            model=record,
            backend=serving.backend,
            finals=[final],
            latency_ms=latency * 1000,
        )
        if final.finish_reason == "error":
            raise Internal(
                final.error or "Generation failed", reason="GENERATION_FAILED", metadata={"model": record.id}
            )
        return pb.GenerateLabTextResponse(
            success=True,
            data=pb.GenerateLabTextData(
                text=lab_text(request.prompt, text),
                model_id=record.id,
                model_name=record.name,
                generation_time=round(latency, 3),
                parameters=pb.LabGenerationParameters(
                    temperature=params.temperature,
                    max_length=params.max_tokens,
                    top_p=params.top_p,
                    top_k=params.top_k,
                ),
                timestamp=iso(utcnow()),
            ),
            meta=meta(),
        )

