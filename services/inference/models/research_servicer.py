"""ModelService's research family: the registry as `/models...` sees it (bare objects, offset and cursor paging:
docs/api.md "research"), and the provider catalogue."""

from __future__ import annotations

import json
import urllib.parse
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format

from llmlab.common.v1 import common_pb2
from llmlab.inference.v1 import model_service_pb2 as pb
from llmlab.runtime import InvalidArgument, validation_error
from llmlab.runtime.envelope import iso, value

from .catalogue import (
    BUILTIN_PROVIDERS,
    KNOWN_PROVIDER_NAMES,
    SERVED_THROUGH,
    backend_from,
    in_process,
    optional,
    registry_error,
    require_name,
    research_columns,
    serving_from,
    struct_field,
)
from .manager import ModelManager
from .registry import BACKENDS, ModelFilter, ModelRecord, NewModel, encode_cursor, slugify

DEFAULT_LIMIT, MAX_LIMIT = 20, 100


def research_config(r: ModelRecord) -> dict[str, Any]:
    """The research model's `config`: what was stored, plus how the platform reaches the model (no secret is stored)."""
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
            SERVED_THROUGH[b] for b in BACKENDS if any(r.backend == b and r.status != "unavailable" for r in records)
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



class ResearchModels:
    """The research family's RPCs of ModelService (composed with the lab family's in servicer.py)."""

    _models: ModelManager

    async def CreateResearchModel(self, request: pb.CreateResearchModelRequest, context: Any) -> pb.ResearchModel:
        name = require_name("name", request.name)
        provider = require_name("provider", request.provider, 64)
        identifier = require_name("model_identifier", request.model_identifier)
        config = struct_field(request, "config") or {}
        backend_obj = config.pop("backend", None)
        serving = serving_from(backend_obj, provider, "config.backend") or in_process()
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
        new.status = "available" if self._models.servable(new.backend, new.id, None) else "unavailable"
        try:
            record = await self._models.registry.create(new)
        except InvalidArgument as exc:
            raise registry_error(exc, {**new.__dict__, "id": new.id}) from None
        return research_model(record)

    async def ListResearchModels(
        self, request: pb.ListResearchModelsRequest, context: Any
    ) -> pb.ListResearchModelsResponse:
        limit = optional(request, "limit")
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise validation_error("limit", limit, f"must be between 1 and {MAX_LIMIT}")
        offset = optional(request, "offset")
        if offset is not None and offset < 0:
            raise validation_error("offset", offset, "must be 0 or more")
        if offset is not None and request.after:
            raise validation_error("offset", offset, "cannot be combined with after (cursor paging)")
        filters = ModelFilter(provider=request.provider or None)

        if request.after:
            rows = await self._models.registry.list(filters, limit=limit + 1, after=request.after)
            page = rows[:limit]
            return pb.ListResearchModelsResponse(
                data=[research_model(r) for r in page],
                page_info=self._page_info(page, has_next=len(rows) > limit, has_previous=True),
            )

        start = offset or 0
        page = await self._models.registry.list(filters, limit=limit, offset=start)
        total = await self._models.registry.count(filters)
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
            # Neither offset nor after: a first request may go on either way, so it answers both (pagination and
            # links for offset paging, page_info whose end_cursor starts cursor paging).
            out.page_info.CopyFrom(self._page_info(page, has_next=has_more, has_previous=False))
        return out

    async def UpdateResearchModel(self, request: pb.UpdateResearchModelRequest, context: Any) -> pb.ResearchModel:
        current = await self._models.record(request.id)
        changes: dict[str, Any] = {}
        if request.HasField("name"):
            changes["name"] = require_name("name", request.name)
        if request.HasField("provider"):
            changes["provider"] = require_name("provider", request.provider, 64)
        if request.HasField("model_identifier"):
            changes["model_identifier"] = require_name("model_identifier", request.model_identifier)
        if request.HasField("version"):
            changes["version"] = request.version
        config = struct_field(request, "config")
        if config:
            if "backend" in config:
                backend_obj = config.pop("backend")
                if backend_obj is None:
                    raise validation_error("config.backend", None, "must be an object; a model keeps a backend")
                serving = backend_from(backend_obj, changes.get("provider", current.provider), "config.backend")
                changes.update(serving)
                changes["status"] = (
                    "available" if self._models.servable(serving["backend"], current.id, None) else "unavailable"
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
            record = await self._models.registry.update(current.id, changes)
        except InvalidArgument as exc:
            raise registry_error(exc, changes) from None
        return research_model(record)

    async def ListResearchProviders(
        self, request: pb.ListResearchProvidersRequest, context: Any
    ) -> httpbody_pb2.HttpBody:
        by_provider: dict[str, list[ModelRecord]] = {name: [] for name in BUILTIN_PROVIDERS}
        for record in await self._models.registry.list():
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

    @staticmethod
    def _page_info(page: list[ModelRecord], *, has_next: bool, has_previous: bool) -> common_pb2.PageInfo:
        return common_pb2.PageInfo(
            has_next_page=has_next,
            has_previous_page=has_previous,
            start_cursor=encode_cursor(page[0]) if page else "",
            end_cursor=encode_cursor(page[-1]) if page else "",
        )
