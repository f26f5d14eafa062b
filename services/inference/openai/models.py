"""`GET /v1/models`: a registered model as OpenAI's model object plus our catalogue fields, filters and paging."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .validation import check_range, invalid_value

# ---------------------------------------------------------------------------------------------------------------
# /v1/models


MODEL_CATEGORIES = ("text-generation", "chat", "embedding")
MODEL_SIZES = ("small", "medium", "large", "xl")


@dataclass(frozen=True)
class ModelPricing:
    """A model's `pricing`: the price of `per_tokens` input and output tokens in `currency`."""

    input_tokens: float = 0.0
    output_tokens: float = 0.0
    currency: str = "USD"
    per_tokens: int = 1000


@dataclass(frozen=True)
class ModelInfo:
    """A registered model as `/v1/models` shows it: OpenAI's fields plus our catalogue fields (docs/api.md)."""

    id: str
    name: str
    provider: str
    category: str
    created_at: datetime
    updated_at: datetime
    description: str = ""
    context_length: int = 0
    max_output_tokens: int = 0
    pricing: ModelPricing = field(default_factory=ModelPricing)
    capabilities: tuple[str, ...] = ()
    languages: tuple[str, ...] = ()
    size: str | None = None  # "small", "medium", "large", "xl" (the `size` filter)
    owned_by: str | None = None  # default: "llmlab" for local models, else the provider


def _rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def render_model(model: ModelInfo) -> dict[str, Any]:
    """`{id, object: "model", created, owned_by}` and the catalogue fields (name, provider, category, pricing, ...),
    named as `OpenAIModel` in the proto (so `json_format.ParseDict` fills the message)."""
    created = model.created_at if model.created_at.tzinfo else model.created_at.replace(tzinfo=UTC)
    return {
        "id": model.id,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": model.owned_by or ("llmlab" if model.provider == "local" else model.provider),
        "name": model.name,
        "provider": model.provider,
        "category": model.category,
        "description": model.description,
        "context_length": model.context_length,
        "max_output_tokens": model.max_output_tokens,
        "pricing": {
            "input_tokens": model.pricing.input_tokens,
            "output_tokens": model.pricing.output_tokens,
            "currency": model.pricing.currency,
            "per_tokens": model.pricing.per_tokens,
        },
        "capabilities": list(model.capabilities),
        "languages": list(model.languages),
        "created_at": _rfc3339(model.created_at),
        "updated_at": _rfc3339(model.updated_at),
    }


@dataclass(frozen=True)
class ModelQuery:
    """Validated filters and paging of `GET /v1/models`."""

    category: str | None = None
    size: str | None = None
    provider: str | None = None
    page: int = 1
    per_page: int = 20


def parse_model_query(
    category: str = "", size: str = "", provider: str = "", page: int | None = None, per_page: int | None = None
) -> ModelQuery:
    """The list request's fields (proto3 gives "" for unset strings) checked as OpenAI-style 400s."""
    if category and category not in MODEL_CATEGORIES:
        raise invalid_value("category", category, MODEL_CATEGORIES)
    if size and size not in MODEL_SIZES:
        raise invalid_value("size", size, MODEL_SIZES)
    page = 1 if page is None else page
    per_page = 20 if per_page is None else per_page
    check_range("page", page, 1, None, "integer")
    check_range("per_page", per_page, 1, 100, "integer")
    return ModelQuery(category or None, size or None, provider or None, page, per_page)


def list_models(models: Sequence[ModelInfo], query: ModelQuery) -> dict[str, Any]:
    """`{object: "list", data, total, page, per_page}` for the models matching the query, sorted by id."""
    matching = [
        m for m in sorted(models, key=lambda m: m.id)
        if (query.category is None or m.category == query.category)
        and (query.size is None or m.size == query.size)
        and (query.provider is None or m.provider.lower() == query.provider.lower())
    ]
    start = (query.page - 1) * query.per_page
    return {
        "object": "list",
        "data": [render_model(m) for m in matching[start:start + query.per_page]],
        "total": len(matching),
        "page": query.page,
        "per_page": query.per_page,
    }
