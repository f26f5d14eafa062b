"""`/v1/models` objects: OpenAI's model shape with our registry's fields, filters and paging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf import json_format
from openai.types import Model

from services.inference.openai import (
    ModelInfo,
    ModelPricing,
    ModelQuery,
    ProtocolError,
    list_models,
    parse_model_query,
    render_model,
)

AT = datetime(2025, 1, 15, 10, 30, tzinfo=UTC)


def model(id: str, **fields) -> ModelInfo:
    base = {"name": id, "provider": "local", "category": "chat", "created_at": AT, "updated_at": AT}
    return ModelInfo(id=id, **{**base, **fields})


SMOL = model(
    "smollm2-135m-instruct",
    name="SmolLM2 135M Instruct",
    description="Small instruct model, served by the embedded engine",
    context_length=8192,
    max_output_tokens=2048,
    pricing=ModelPricing(input_tokens=0.0, output_tokens=0.0),
    capabilities=("text-generation", "chat", "function-calling"),
    languages=("en",),
    size="small",
    updated_at=AT + timedelta(days=1),
)


def test_render_model_has_openais_and_seed_003s_fields() -> None:
    assert render_model(SMOL) == {
        "id": "smollm2-135m-instruct",
        "object": "model",
        "created": 1736937000,
        "owned_by": "llmlab",
        "name": "SmolLM2 135M Instruct",
        "provider": "local",
        "category": "chat",
        "description": "Small instruct model, served by the embedded engine",
        "context_length": 8192,
        "max_output_tokens": 2048,
        "pricing": {"input_tokens": 0.0, "output_tokens": 0.0, "currency": "USD", "per_tokens": 1000},
        "capabilities": ["text-generation", "chat", "function-calling"],
        "languages": ["en"],
        "created_at": "2025-01-15T10:30:00Z",
        "updated_at": "2025-01-16T10:30:00Z",
    }
    Model.model_validate(render_model(SMOL))


def test_owner_and_timezones() -> None:
    assert render_model(model("gpt-4o", provider="openai"))["owned_by"] == "openai"
    assert render_model(model("x", owned_by="acme"))["owned_by"] == "acme"
    naive = model("n", created_at=datetime(2025, 1, 15, 10, 30), updated_at=datetime(2025, 1, 15, 12, 30,
                                                                                    tzinfo=timezone(timedelta(hours=2))))
    out = render_model(naive)
    assert out["created_at"] == "2025-01-15T10:30:00Z" and out["created"] == 1736937000
    assert out["updated_at"] == "2025-01-15T10:30:00Z"


def test_rendered_models_fill_the_proto_messages() -> None:
    openai_service_pb2 = pytest.importorskip("llmlab.inference.v1.openai_service_pb2")
    msg = json_format.ParseDict(render_model(SMOL), openai_service_pb2.OpenAIModel())
    assert (msg.id, msg.created, msg.pricing.per_tokens, list(msg.capabilities)) == (
        "smollm2-135m-instruct", 1736937000, 1000, ["text-generation", "chat", "function-calling"])
    listing = list_models([SMOL], ModelQuery())
    resp = json_format.ParseDict(listing, openai_service_pb2.ListOpenAIModelsResponse())
    assert (resp.object, resp.total, resp.page, resp.per_page, resp.data[0].owned_by) == ("list", 1, 1, 20, "llmlab")


MODELS = [
    SMOL,
    model("gpt-4o", provider="openai", size="large"),
    model("llama-3-8b", provider="meta", category="text-generation", size="medium"),
    model("embed-small", provider="openai", category="embedding", size="small"),
]


@pytest.mark.parametrize(
    ("query", "ids", "total"),
    [
        (ModelQuery(), ["embed-small", "gpt-4o", "llama-3-8b", "smollm2-135m-instruct"], 4),
        (ModelQuery(category="chat"), ["gpt-4o", "smollm2-135m-instruct"], 2),
        (ModelQuery(size="small"), ["embed-small", "smollm2-135m-instruct"], 2),
        (ModelQuery(provider="OpenAI"), ["embed-small", "gpt-4o"], 2),
        (ModelQuery(per_page=3, page=2), ["smollm2-135m-instruct"], 4),
        (ModelQuery(per_page=3, page=3), [], 4),
    ],
)
def test_list_filters_and_pages(query: ModelQuery, ids: list[str], total: int) -> None:
    out = list_models(MODELS, query)
    assert out["object"] == "list"
    assert [m["id"] for m in out["data"]] == ids
    assert (out["total"], out["page"], out["per_page"]) == (total, query.page, query.per_page)


def test_query_defaults_and_errors() -> None:
    assert parse_model_query() == ModelQuery()
    assert parse_model_query("chat", "", "meta", 2, 50) == ModelQuery("chat", None, "meta", 2, 50)
    with pytest.raises(ProtocolError) as info:
        parse_model_query(category="vision")
    assert info.value.message == ("Invalid value: 'vision'. Supported values are: 'text-generation', 'chat', and "
                                  "'embedding'.")
    assert info.value.param == "category"
    with pytest.raises(ProtocolError) as info:
        parse_model_query(per_page=101)
    assert info.value.message == ("Invalid 'per_page': integer above maximum value. Expected a value <= 100, but got "
                                  "101 instead.")
    with pytest.raises(ProtocolError):
        parse_model_query(page=0)
    with pytest.raises(ProtocolError):
        parse_model_query(size="tiny")
