"""ModelService: the model registry as the lab family (seeds 000 §9.1, 002 §Models) and the research family
(seed 001 §Models) see it, and seed 002's one-shot generation through a model's backend."""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format

from llmlab.common.v1 import common_pb2
from llmlab.inference.v1 import model_service_pb2 as pb
from llmlab.inference.v1 import model_service_pb2_grpc as pb_grpc
from llmlab.runtime import Internal, InvalidArgument, validation_error
from llmlab.runtime.context import current_request_id
from llmlab.runtime.envelope import iso, meta, utcnow, value

from .backends import Backend, BackendRequest
from .errors import ModelNotLoaded
from .generation import merge_streams
from .models import ModelManager
from .registry import _SECRET_KEYS as SECRET_KEYS
from .registry import BACKENDS, ModelFilter, ModelRecord, NewModel, encode_cursor, slugify, validate_backend
from .types import GenerationEvent, SamplingParams
from .usage import UsageRecorder

# Seed 002 "Generate Text": the documented request values double as the defaults.
LAB_DEFAULTS = {"temperature": 0.7, "max_length": 100, "top_p": 0.9, "top_k": 50}
DEFAULT_LIMIT, MAX_LIMIT = 20, 100

# Providers whose name says how the platform reaches their models; any other provider is a label, and its models
# are served through the `backend` object of their config (or not at all, status "unavailable").
PROVIDER_BACKENDS = {"local": "onnx", "triton": "triton", "openai-compatible": "openai"}
_BACKEND_ALIASES = {"local": "onnx", "onnxruntime": "onnx", "openai-compatible": "openai"}


@dataclass(frozen=True)
class Provider:
    """How `GET /models/providers` describes a provider."""

    display_name: str
    description: str


BUILTIN_PROVIDERS = {
    "local": Provider(
        "Local (ONNX Runtime)",
        "Models served in process by llmlab's continuous-batching engine on ONNX Runtime (CPU, or CUDA where a GPU "
        "exists)",
    ),
    "triton": Provider(
        "NVIDIA Triton",
        "Models served by an NVIDIA Triton Inference Server over its gRPC (KServe v2) protocol, with token streaming",
    ),
    "openai-compatible": Provider(
        "OpenAI-compatible",
        "Any server that speaks the OpenAI API (OpenAI, vLLM, Ollama, ...) at a registered base_url, with the key "
        "read from a named environment variable",
    ),
}
KNOWN_PROVIDER_NAMES = {
    "openai": "OpenAI", "anthropic": "Anthropic", "google": "Google AI", "mistral": "Mistral AI", "meta": "Meta",
    "cohere": "Cohere", "huggingface": "Hugging Face", "ollama": "Ollama", "vllm": "vLLM", "azure": "Azure OpenAI",
}  # fmt: skip
_SERVED_THROUGH = {
    "onnx": "the in-process ONNX Runtime engine",
    "triton": "NVIDIA Triton",
    "openai": "an OpenAI-compatible endpoint",
}

# Status spellings (registry.py: canonical lower-case in the DB, each family renders its own).
_LAB_LIST_STATUS = {"available": "active"}  # seed 000 §9.1; the other states keep their canonical name


def lab_list_status(status: str) -> str:
    """Seed 000 §9.1's spelling: "active" for a servable model."""
    return _LAB_LIST_STATUS.get(status, status)


def lab_item_status(status: str) -> str:
    """Seed 002's spelling: "AVAILABLE", "LOADING", ..."""
    return status.upper()


# --- proto -> plain values ------------------------------------------------------------------------------------


def _struct(msg: Any, name: str) -> dict[str, Any] | None:
    """A Struct field as a dict, or None when the request did not carry it."""
    return json_format.MessageToDict(getattr(msg, name)) if msg.HasField(name) else None


def _opt(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def _as_int(field: str, v: Any, constraint: str = "must be a positive integer") -> int:
    """A JSON number (always a double in a Struct) that must be a positive integer."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 1:
        raise validation_error(field, v, constraint)
    return int(v)


def _as_cost(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise validation_error(field, v, "must be a non-negative number")
    return float(v)


def _require_text(field: str, v: str, limit: int = 255) -> str:
    if not v.strip():
        raise validation_error(field, v, "is required")
    if len(v) > limit:
        raise validation_error(field, v, f"must be at most {limit} characters")
    return v.strip()


def _capabilities(field: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(c, str) and c.strip() for c in v):
        raise validation_error(field, v, "must be a list of non-empty strings")
    return [c.strip() for c in v]


def backend_from(obj: Any, provider: str, field: str) -> dict[str, Any]:
    """The registry columns (`backend`, `backend_config`, `format`) for a `backend` object of a request.

    `{"type": "openai", "base_url": "https://host/v1", "api_key_env": "NAME", "model": "upstream-name"}` or
    `{"type": "triton", "url": "host:8001", "model_name": "smollm2"}`; `type` defaults from the provider (local,
    triton, openai-compatible) or from the keys given (`base_url` -> openai, `url` -> triton)."""
    if not isinstance(obj, dict):
        raise validation_error(field, obj, "must be an object")
    config = dict(obj)
    kind = config.pop("type", None) or PROVIDER_BACKENDS.get(provider)
    if kind is None:
        kind = "openai" if "base_url" in config else "triton" if "url" in config else None
    kind = _BACKEND_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in BACKENDS:
        raise validation_error(f"{field}.type", kind, f"must be one of {', '.join(BACKENDS)}")
    for key in ("timeout_s", "connect_timeout_s"):
        if key in config and (
            isinstance(config[key], bool) or not isinstance(config[key], int | float) or config[key] <= 0
        ):
            raise validation_error(f"{field}.{key}", config[key], "must be a positive number of seconds")
    try:
        validate_backend(kind, config)
    except InvalidArgument as exc:
        raise _renamed(exc, "backend_config", field, config) from None
    return {"backend": kind, "backend_config": config, "format": "onnx" if kind == "onnx" else "remote"}


def _renamed(exc: InvalidArgument, prefix: str, field: str, values: Mapping[str, Any]) -> InvalidArgument:
    """A registry validation error about `<prefix>.<key>` as the seed 000 validation error on `<field>.<key>`."""
    if not exc.field_violations:
        return exc
    name, constraint = exc.field_violations[0]
    key = name.removeprefix(f"{prefix}.")
    secret = key.lower().replace("-", "_") in SECRET_KEYS
    return validation_error(
        f"{field}.{key}", "[redacted]" if secret else values.get(key), constraint, message=exc.message
    )


def _registry_error(exc: InvalidArgument, values: Mapping[str, Any]) -> InvalidArgument:
    """A registry validation error with the seed 000 details (field, value, constraint)."""
    if not exc.field_violations:
        return exc
    name, constraint = exc.field_violations[0]
    return validation_error(name, values.get(name), constraint, message=exc.message)


def _generation_defaults(field: str, params: Mapping[str, Any]) -> None:
    """Default generation parameters a model stores must be ones GenerateLabText accepts."""
    checks = {
        "temperature": lambda v: 0 <= v <= 2,
        "top_p": lambda v: 0 < v <= 1,
        "top_k": lambda v: v >= 0 and v == int(v),
        "max_length": lambda v: v >= 1 and v == int(v),
    }
    for key, ok in checks.items():
        v = params.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not ok(v)):
            raise validation_error(f"{field}.{key}", v, _LAB_CONSTRAINTS[key])


_LAB_CONSTRAINTS = {
    "temperature": "must be between 0 and 2",
    "top_p": "must be greater than 0 and at most 1",
    "top_k": "must be 0 (off) or a positive integer",
    "max_length": "must be a positive integer",
}


def research_columns(config: Mapping[str, Any], field: str = "config") -> dict[str, Any]:
    """Registry columns that seed 001's free-form `config` determines (so the other families see them)."""
    out: dict[str, Any] = {}
    for key in ("max_context_window", "context_window"):
        if config.get(key) is not None:
            out["context_window"] = _as_int(f"{field}.{key}", config[key])
    for key in ("max_output_tokens", "max_tokens"):
        if config.get(key) is not None:
            out["max_tokens"] = _as_int(f"{field}.{key}", config[key])
    pricing = config.get("pricing")
    if pricing is not None:
        if not isinstance(pricing, dict):
            raise validation_error(f"{field}.pricing", pricing, "must be an object")
        per_million = {
            k: _as_cost(f"{field}.pricing.{k}", pricing.get(k, 0)) for k in ("input_per_million", "output_per_million")
        }
        out["input_cost_per_token"] = per_million["input_per_million"] / 1e6
        out["output_cost_per_token"] = per_million["output_per_million"] / 1e6
        out["cost_per_token"] = (out["input_cost_per_token"] + out["output_cost_per_token"]) / 2
    if config.get("capabilities") is not None:
        out["capabilities"] = _capabilities(f"{field}.capabilities", config["capabilities"])
        out["category"] = "chat" if "chat" in out["capabilities"] else "text-generation"
    return out


def lab_text(prompt: str, answer: str) -> str:
    """Seed 002's `text`: the prompt followed by what the model wrote. A chat model often restates the prompt
    before continuing it; then its answer already is the prompt followed by the continuation."""
    head = answer.lstrip()
    if prompt.strip() and head.lower().startswith(prompt.strip().lower()):
        return head
    joiner = "" if not answer or prompt[-1:].isspace() or answer[:1].isspace() else " "
    return prompt + joiner + answer


# --- plain values -> proto ------------------------------------------------------------------------------------


def lab_model(r: ModelRecord, *, detail: bool = False) -> pb.LabModel:
    """The union of seed 000's and 002's model fields; `parameters` only on the single-model view."""
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


def research_config(r: ModelRecord) -> dict[str, Any]:
    """Seed 001's `config`: what was stored, plus how the platform reaches the model (no secret is stored)."""
    return {**r.config, "backend": {"type": r.backend, **r.backend_config}}


def research_model(r: ModelRecord) -> pb.ResearchModel:
    model = pb.ResearchModel(
        id=r.uuid,
        name=r.name,
        provider=r.provider,
        model_identifier=r.model_identifier or r.id,
        version=r.version,
        created_at=iso(r.created_at),
        updated_at=iso(r.updated_at),
    )
    model.config.update(research_config(r))
    return model


def _page_link(limit: int, offset: int, provider: str) -> str:
    query = {"limit": limit, "offset": offset, **({"provider": provider} if provider else {})}
    return f"/models?{urllib.parse.urlencode(query)}"


def _provider_pb(name: str, records: list[ModelRecord]) -> pb.ResearchProvider:
    builtin = BUILTIN_PROVIDERS.get(name)
    if builtin is not None:
        display, description = builtin.display_name, builtin.description
    else:
        display = KNOWN_PROVIDER_NAMES.get(name, name.replace("-", " ").replace("_", " ").title())
        served = [
            _SERVED_THROUGH[b] for b in BACKENDS if any(r.backend == b and r.status != "unavailable" for r in records)
        ]
        description = f"{display} models registered in llmlab" + (
            f", served through {' and '.join(served)}" if served else " (no serving backend configured)"
        )
    return pb.ResearchProvider(
        name=name,
        display_name=display,
        description=description,
        supported_models=[r.id for r in records],  # the ids generation takes (a slug of the identifier)
    )


class ModelServicer(pb_grpc.ModelServiceServicer):
    """Seed 000 §9.1, seed 002 §Models and seed 001 §Models over the one model registry."""

    def __init__(self, models: ModelManager, usage: UsageRecorder) -> None:
        self._models = models
        self._registry = models.registry
        self._usage = usage

    # --- lab family ---

    async def ListLabModels(self, request: pb.ListLabModelsRequest, context: Any) -> pb.ListLabModelsResponse:
        records = await self._registry.list()
        return pb.ListLabModelsResponse(
            success=True, data=pb.ListLabModelsData(models=[lab_model(r) for r in records]), meta=meta()
        )

    async def GetLabModel(self, request: pb.GetLabModelRequest, context: Any) -> pb.GetLabModelResponse:
        record = await self._registry.get(request.id)
        return pb.GetLabModelResponse(success=True, data=lab_model(record, detail=True), meta=meta())

    async def CreateLabModel(self, request: pb.CreateLabModelRequest, context: Any) -> pb.CreateLabModelResponse:
        name = _require_text("name", request.name)
        base_model = _require_text("base_model", request.base_model)
        provider = _require_text("provider", request.provider, 64) if request.HasField("provider") else "local"
        model_id = request.id if request.HasField("id") else slugify(name)
        if not model_id:
            raise validation_error("name", name, "must contain a letter or digit (the id is derived from it)")
        parameters = _struct(request, "parameters") or {}
        backend_obj = parameters.pop("backend", None)
        _generation_defaults("parameters", parameters)

        base = await self._registry.find(base_model)
        if backend_obj is not None:
            serving = backend_from(backend_obj, provider, "parameters.backend")
        elif provider in ("triton", "openai-compatible"):
            raise validation_error(
                "parameters.backend",
                None,
                f"is required for provider {provider}",
                message=f"A {provider} model needs parameters.backend to say where it is served",
            )
        elif base is not None:  # a model derived from a registered one is served the same way
            config = dict(base.backend_config)
            if base.backend == "openai":
                config.setdefault("model", base.upstream_model)
            serving = {
                "backend": base.backend,
                "backend_config": config,
                "format": base.format,
                "quantization": base.quantization,
            }
        else:
            serving = {"backend": "onnx", "backend_config": {}, "format": "onnx"}

        context_window = _opt(request, "context_window")
        context_window = context_window if context_window is not None else (base.context_window if base else 2048)
        max_tokens = _opt(request, "max_tokens")
        max_tokens = max_tokens if max_tokens is not None else min(base.max_tokens if base else 2048, context_window)
        if context_window > 0 and max_tokens > context_window:
            raise validation_error("max_tokens", max_tokens, "must not exceed context_window")
        capabilities = (
            _capabilities("capabilities", list(request.capabilities)) if request.capabilities else ["text-generation"]
        )
        cost = _opt(request, "cost_per_token")
        new = NewModel(
            id=model_id, name=name, provider=provider, base_model=base_model, description=request.description,
            model_size=request.model_size, capabilities=capabilities,
            category="chat" if "chat" in capabilities else "text-generation",
            cost_per_token=cost if cost is not None else 0.0, max_tokens=max_tokens, context_window=context_window,
            model_identifier=base.upstream_model if base and base.backend == "openai" else base_model,
            parameters=parameters or None, **serving,
        )  # fmt: skip
        new.status = "available" if self._servable(new.backend, model_id, base) else "unavailable"
        try:
            record = await self._registry.create(new)
        except InvalidArgument as exc:
            raise _registry_error(exc, {**new.__dict__, "id": model_id}) from None
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
        record = await self._registry.get(request.id)
        stored = record.parameters or {}
        used: dict[str, Any] = {}
        for key, default in LAB_DEFAULTS.items():
            given = _opt(request, key)
            used[key] = given if given is not None else stored.get(key, default)
        checks = {
            "temperature": 0 <= used["temperature"] <= 2,
            "top_p": 0 < used["top_p"] <= 1,
            "top_k": used["top_k"] >= 0,
            "max_length": used["max_length"] >= 1,
        }
        for key, ok in checks.items():
            if not ok:
                raise validation_error(key, used[key], _LAB_CONSTRAINTS[key])
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

        serving, backend = await self._serving(record)
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

    # --- research family ---

    async def CreateResearchModel(self, request: pb.CreateResearchModelRequest, context: Any) -> pb.ResearchModel:
        name = _require_text("name", request.name)
        provider = _require_text("provider", request.provider, 64)
        identifier = _require_text("model_identifier", request.model_identifier)
        config = _struct(request, "config") or {}
        backend_obj = config.pop("backend", None)
        if backend_obj is not None:
            serving = backend_from(backend_obj, provider, "config.backend")
        elif provider in ("triton", "openai-compatible"):
            raise validation_error(
                "config.backend",
                None,
                f"is required for provider {provider}",
                message=f"A {provider} model needs config.backend to say where it is served",
            )
        else:
            serving = {"backend": "onnx", "backend_config": {}, "format": "onnx"}
        columns = research_columns(config)
        columns.setdefault("max_tokens", min(2048, columns.get("context_window", 2048)))
        columns.setdefault("context_window", max(2048, columns["max_tokens"]))
        if columns["max_tokens"] > columns["context_window"]:
            raise validation_error("config.max_tokens", columns["max_tokens"], "must not exceed the context window")
        new = NewModel(
            name=name,
            provider=provider,
            base_model=identifier,
            model_identifier=identifier,
            version=request.version,
            config=config,
            **columns,
            **serving,
        )
        new.id = slugify(identifier)
        if not new.id:
            raise validation_error("model_identifier", identifier, "must contain a letter or digit")
        new.status = "available" if self._servable(new.backend, new.id, None) else "unavailable"
        try:
            record = await self._registry.create(new)
        except InvalidArgument as exc:
            raise _registry_error(exc, {**new.__dict__, "id": new.id}) from None
        return research_model(record)

    async def ListResearchModels(
        self, request: pb.ListResearchModelsRequest, context: Any
    ) -> pb.ListResearchModelsResponse:
        limit = _opt(request, "limit")
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise validation_error("limit", limit, f"must be between 1 and {MAX_LIMIT}")
        offset = _opt(request, "offset")
        if offset is not None and offset < 0:
            raise validation_error("offset", offset, "must be 0 or more")
        if offset is not None and request.after:
            raise validation_error("offset", offset, "cannot be combined with after (cursor paging)")
        filters = ModelFilter(provider=request.provider or None)

        if request.after:
            rows = await self._registry.list(filters, limit=limit + 1, after=request.after)
            page = rows[:limit]
            return pb.ListResearchModelsResponse(
                data=[research_model(r) for r in page],
                page_info=self._page_info(page, has_next=len(rows) > limit, has_previous=True),
            )

        start = offset or 0
        page = await self._registry.list(filters, limit=limit, offset=start)
        total = await self._registry.count(filters)
        has_more = start + len(page) < total
        last = ((total - 1) // limit) * limit if total else 0
        out = pb.ListResearchModelsResponse(
            data=[research_model(r) for r in page],
            pagination=common_pb2.OffsetPagination(total=total, limit=limit, offset=start, has_more=has_more),
            links=common_pb2.PageLinks(
                self=_page_link(limit, start, request.provider),
                next=value(_page_link(limit, start + limit, request.provider) if has_more else None),
                first=_page_link(limit, 0, request.provider),
                last=_page_link(limit, last, request.provider),
            ),
        )
        if offset is None:
            # Neither offset nor after: seed 001 shows this first request both ways, so it answers both, and its
            # end_cursor starts cursor paging.
            out.page_info.CopyFrom(self._page_info(page, has_next=has_more, has_previous=False))
        return out

    async def UpdateResearchModel(self, request: pb.UpdateResearchModelRequest, context: Any) -> pb.ResearchModel:
        current = await self._registry.get(request.id)
        changes: dict[str, Any] = {}
        if request.HasField("name"):
            changes["name"] = _require_text("name", request.name)
        if request.HasField("provider"):
            changes["provider"] = _require_text("provider", request.provider, 64)
        if request.HasField("model_identifier"):
            changes["model_identifier"] = _require_text("model_identifier", request.model_identifier)
        if request.HasField("version"):
            changes["version"] = request.version
        config = _struct(request, "config")
        if config:
            if "backend" in config:
                backend_obj = config.pop("backend")
                if backend_obj is None:
                    raise validation_error("config.backend", None, "must be an object; a model keeps a backend")
                serving = backend_from(backend_obj, changes.get("provider", current.provider), "config.backend")
                changes.update(serving)
                changes["status"] = (
                    "available" if self._servable(serving["backend"], current.id, None) else "unavailable"
                )
            columns = research_columns({k: v for k, v in config.items() if v is not None})
            if "context_window" in columns and "max_tokens" not in columns:
                columns["max_tokens"] = min(current.max_tokens, columns["context_window"])
            if columns.get("max_tokens", current.max_tokens) > columns.get("context_window", current.context_window):
                raise validation_error(
                    "config.max_tokens",
                    columns.get("max_tokens", current.max_tokens),
                    "must not exceed the context window",
                )
            changes.update(columns)
            if config:
                changes["config"] = config
        try:
            record = await self._registry.update(current.id, changes)
        except InvalidArgument as exc:
            raise _registry_error(exc, changes) from None
        return research_model(record)

    async def ListResearchProviders(
        self, request: pb.ListResearchProvidersRequest, context: Any
    ) -> httpbody_pb2.HttpBody:
        by_provider: dict[str, list[ModelRecord]] = {name: [] for name in BUILTIN_PROVIDERS}
        for record in await self._registry.list():
            by_provider.setdefault(record.provider, []).append(record)
        names = [*BUILTIN_PROVIDERS, *sorted(set(by_provider) - set(BUILTIN_PROVIDERS))]
        items = [
            json_format.MessageToDict(
                _provider_pb(n, by_provider[n]),
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            )
            for n in names
        ]
        return httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(items).encode())

    # --- helpers ---

    def _servable(self, backend: str, model_id: str, base: ModelRecord | None) -> bool:
        """Whether generation can reach a model now: a remote backend is configured, or an engine holds it (or the
        registered model it derives from)."""
        if backend != "onnx":
            return True
        return model_id in self._models.loaded or (base is not None and base.id in self._models.loaded)

    async def _serving(self, record: ModelRecord) -> tuple[ModelRecord, Backend]:
        """The record and backend that generate for `record`: its own, or for an in-process model without an
        engine of its own (a lab model registered over a base model), the base model's engine."""
        try:
            return await self._models.backend(record.id)
        except ModelNotLoaded:
            if record.backend != "onnx" or not record.base_model or record.base_model == record.id:
                raise
            base = await self._registry.find(record.base_model)
            if base is None or base.backend != "onnx" or base.id not in self._models.loaded:
                raise
            return await self._models.backend(base.id)

    @staticmethod
    def _page_info(page: list[ModelRecord], *, has_next: bool, has_previous: bool) -> common_pb2.PageInfo:
        return common_pb2.PageInfo(
            has_next_page=has_next,
            has_previous_page=has_previous,
            start_cursor=encode_cursor(page[0]) if page else "",
            end_cursor=encode_cursor(page[-1]) if page else "",
        )
