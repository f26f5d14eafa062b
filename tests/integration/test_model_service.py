"""ModelService over gRPC: the inference service in process on port 0, against the real Postgres and Redis, with the
embedded SmolLM2-135M-Instruct loaded: the lab family's `/api/models...` and the research family's `/models...`.

The embedded model comes from the import cache (~/.cache/llmlab/models or $LLMLAB_MODEL_CACHE). Without it the
tests skip, unless LLMLAB_REQUIRE_MODEL=1, which makes a missing model a failure.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from llmlab.inference.v1 import model_service_pb2 as pb
from llmlab.inference.v1 import model_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import stream_key
from services.inference.app import SPEC
from services.inference.artifacts import find_cached
from services.inference.models.lab_servicer import lab_text
from services.inference.settings import InferenceSettings
from tests.conftest import delete_keys, drop_schemas

pytestmark = pytest.mark.integration

EMBEDDED = "smollm2-135m-instruct"
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")
CLAUDE_CONFIG = {
    "max_context_window": 200000,
    "supports_vision": True,
    "supports_function_calling": True,
    "pricing": {"input_per_million": 3.0, "output_per_million": 15.0},
}


@pytest.fixture(scope="module")
def model_cached() -> None:
    if find_cached(EMBEDDED) is None:
        message = f"the embedded model {EMBEDDED} is not imported (python -m services.inference.importer)"
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
async def inference_app(model_cached, database_url, redis_url) -> AsyncIterator[ServiceApp]:
    """One inference service for the module (loading the model takes seconds), in its own schema and prefix."""
    run = uuid.uuid4().hex[:12]
    schema, prefix = f"t_{run}", f"t{run}"
    settings = load_settings(
        InferenceSettings, SPEC.name, environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=schema, redis_prefix=prefix, shutdown_grace_seconds=1.0, max_batch=4,
    )  # fmt: skip
    app = ServiceApp(SPEC, settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        await drop_schemas(database_url, schema)
        await delete_keys(redis_url, prefix)


@pytest.fixture(scope="module")
async def stub(inference_app) -> AsyncIterator[pb_grpc.ModelServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        yield pb_grpc.ModelServiceStub(channel)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def struct(d: dict) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


def as_json(msg) -> dict:
    """As the gateway renders it (primitive fields always printed, proto field names)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def rpc_error(call) -> tuple[grpc.StatusCode, str, list[str], dict]:
    """Code, ErrorInfo reason, BadRequest fields and Struct details of a failed call."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    status = rpc_status.from_call(err.value)
    assert status is not None, "every error carries google.rpc details"
    reason, fields, details = "", [], {}
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
            reason = info.reason
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
        elif any_.Is(struct_pb2.Struct.DESCRIPTOR):
            s = struct_pb2.Struct()
            any_.Unpack(s)
            details = json_format.MessageToDict(s)
    return err.value.code(), reason, fields, details


async def test_list_shows_the_embedded_model_with_every_union_field(stub):
    reply = await stub.ListLabModels(pb.ListLabModelsRequest())
    assert reply.success and reply.meta.request_id and RFC3339.match(reply.meta.timestamp)
    (m,) = [m for m in reply.data.models if m.id == EMBEDDED]
    assert (m.name, m.provider, m.base_model, m.status) == ("SmolLM2 135M Instruct", "local", EMBEDDED, "active")
    assert m.description and m.model_size == "135M"
    assert {"text-generation", "chat"} <= set(m.capabilities)
    assert m.cost_per_token == 0.0 and m.context_window == 8192 and 0 < m.max_tokens <= m.context_window
    assert RFC3339.match(m.created_at) and RFC3339.match(m.updated_at)
    assert not m.HasField("parameters")  # "Omitted in lists"
    union = {"id", "name", "provider", "base_model", "status", "description", "model_size", "capabilities",
             "cost_per_token", "max_tokens", "context_window", "created_at", "updated_at"}  # fmt: skip
    assert union <= set(as_json(m))


async def test_lab_create_get_round_trip_and_duplicate(stub):
    name = unique("My Custom Model")
    created = await stub.CreateLabModel(pb.CreateLabModelRequest(
        name=name, base_model=EMBEDDED, description="Custom model for specific use case", model_size="135M",
        parameters=struct({"temperature": 0.2, "top_k": 20}),
    ))  # fmt: skip
    slug = name.lower().replace(" ", "-")
    assert created.success and created.meta.request_id
    assert as_json(created.data) == {"id": slug, "name": name, "base_model": EMBEDDED, "status": "AVAILABLE",
                                     "message": "Model created successfully"}  # fmt: skip

    got = (await stub.GetLabModel(pb.GetLabModelRequest(id=slug))).data
    assert (got.id, got.name, got.base_model, got.status, got.provider) == (slug, name, EMBEDDED, "AVAILABLE", "local")
    assert got.description == "Custom model for specific use case" and got.model_size == "135M"
    assert list(got.capabilities) == ["text-generation"] and got.cost_per_token == 0.0
    assert got.context_window == 8192  # the base model's
    assert as_json(got)["parameters"] == {"temperature": 0.2, "top_k": 20}
    listed = {m.id: m for m in (await stub.ListLabModels(pb.ListLabModelsRequest())).data.models}
    assert listed[slug].status == "active"

    code, reason, _, _ = await rpc_error(stub.CreateLabModel(pb.CreateLabModelRequest(name=name, base_model="gpt2")))
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_EXISTS")

    # A base model nothing can serve: registered, honestly unavailable, `parameters` null.
    other = await stub.CreateLabModel(pb.CreateLabModelRequest(
        id=unique("gpt2-base"), name="GPT-2 Base", base_model="gpt2", model_size="124M",
        capabilities=["text-generation"], cost_per_token=0.00003, max_tokens=512, context_window=1024,
    ))  # fmt: skip
    assert other.data.status == "UNAVAILABLE"
    got = as_json((await stub.GetLabModel(pb.GetLabModelRequest(id=other.data.id))).data)
    assert got["parameters"] is None and got["status"] == "UNAVAILABLE"
    assert (got["max_tokens"], got["context_window"], got["cost_per_token"]) == (512, 1024, 0.00003)
    code, reason, _, _ = await rpc_error(
        stub.GenerateLabText(pb.GenerateLabTextRequest(id=other.data.id, prompt="Hello"))
    )
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "MODEL_NOT_LOADED")


async def test_lab_create_registers_an_openai_compatible_upstream_and_a_triton_model(stub):
    upstream = await stub.CreateLabModel(pb.CreateLabModelRequest(
        id=unique("gpt-4o-mini"), name="GPT-4o mini", base_model="gpt-4o-mini", provider="openai",
        capabilities=["text-generation", "chat"], cost_per_token=0.0000004, context_window=128000, max_tokens=16384,
        parameters=struct({"backend": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"}}),
    ))  # fmt: skip
    assert upstream.data.status == "AVAILABLE"
    got = as_json((await stub.GetLabModel(pb.GetLabModelRequest(id=upstream.data.id))).data)
    assert got["parameters"] is None  # the backend is not a generation parameter
    assert got["provider"] == "openai" and got["capabilities"] == ["text-generation", "chat"]

    triton = await stub.CreateLabModel(pb.CreateLabModelRequest(
        id=unique("smollm2-triton"), name="SmolLM2 on Triton", base_model=EMBEDDED, provider="triton",
        parameters=struct({"backend": {"url": "triton:8001", "model_name": "smollm2"}}),
    ))  # fmt: skip
    assert triton.data.status == "AVAILABLE"


@pytest.mark.parametrize(
    ("request_kw", "field"),
    [
        ({"name": "", "base_model": "gpt2"}, "name"),
        ({"name": "x" * 256, "base_model": "gpt2"}, "name"),
        ({"name": "No base"}, "base_model"),
        ({"name": "!!!", "base_model": "gpt2"}, "name"),
        ({"name": "Bad id", "base_model": "gpt2", "id": "Not A Slug"}, "id"),
        ({"name": "Bad limits", "base_model": "gpt2", "max_tokens": 4096, "context_window": 1024}, "max_tokens"),
        ({"name": "Bad temp", "base_model": "gpt2", "parameters": {"temperature": 5}}, "parameters.temperature"),
        ({"name": "Triton", "base_model": "gpt2", "provider": "triton"}, "parameters.backend"),
        ({"name": "No url", "base_model": "gpt2", "parameters": {"backend": {"type": "openai"}}},
         "parameters.backend.base_url"),
        ({"name": "Secret", "base_model": "gpt2",
          "parameters": {"backend": {"base_url": "https://u/v1", "api_key": "sk-123"}}}, "parameters.backend.api_key"),
        ({"name": "Kind", "base_model": "gpt2", "parameters": {"backend": {"type": "grpc"}}},
         "parameters.backend.type"),
    ],
)  # fmt: skip
async def test_lab_create_rejects_bad_input_naming_the_field(stub, request_kw, field):
    kw = dict(request_kw)
    if "parameters" in kw:
        kw["parameters"] = struct(kw["parameters"])
    code, reason, fields, details = await rpc_error(stub.CreateLabModel(pb.CreateLabModelRequest(**kw)))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR", [field])
    assert details["field"] == field and details["constraint"]
    assert "sk-123" not in json.dumps(details)  # a refused secret is never echoed


async def test_unknown_model_is_not_found_everywhere(stub):
    missing = unique("no-such-model")
    for call in (
        stub.GetLabModel(pb.GetLabModelRequest(id=missing)),
        stub.GenerateLabText(pb.GenerateLabTextRequest(id=missing, prompt="Hello")),
        stub.UpdateResearchModel(pb.UpdateResearchModelRequest(id=missing, version="2")),
        stub.UpdateResearchModel(pb.UpdateResearchModelRequest(id=str(uuid.uuid4()), version="2")),
    ):
        code, reason, _, _ = await rpc_error(call)
        assert (code, reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")


async def test_lab_generate_returns_real_text_with_usage(stub, inference_app, redis_client):
    prompt = "What is the capital of France? Answer in one sentence."
    reply = await stub.GenerateLabText(
        pb.GenerateLabTextRequest(id=EMBEDDED, prompt=prompt, temperature=0.0, max_length=40)
    )
    data = reply.data
    assert reply.success and data.text.startswith(prompt) and "Paris" in data.text[len(prompt):]
    assert (data.model_id, data.model_name) == (EMBEDDED, "SmolLM2 135M Instruct")
    p = data.parameters
    assert (p.temperature, p.max_length, p.top_p, p.top_k) == (0.0, 40, 0.9, 50)
    assert 0 < data.generation_time < 60 and RFC3339.match(data.timestamp)

    key = stream_key(inference_app.settings.redis_prefix, "usage")
    events = [json.loads(f[b"data"]) for _, f in await redis_client.xrange(key)]
    (usage,) = [e for e in events if e["endpoint"] == "/api/models/{id}/generate" and e["model"] == EMBEDDED
                and e["request_id"] == reply.meta.request_id]  # fmt: skip
    assert usage["prompt_tokens"] > 10 and 0 < usage["completion_tokens"] <= 40
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["backend"] == "onnx" and usage["latency_ms"] > 0 and usage["time_to_first_token_ms"] > 0

    # The lab servicer's LAB_DEFAULTS apply when the body gives none, and the text is still a real answer.
    defaults = (await stub.GenerateLabText(pb.GenerateLabTextRequest(id=EMBEDDED, prompt="Name a color."))).data
    assert as_json(defaults.parameters) == {"temperature": 0.7, "max_length": 100, "top_p": 0.9, "top_k": 50}
    assert len(defaults.text) > len("Name a color.")


async def test_lab_generate_through_a_model_registered_over_the_embedded_one(stub):
    created = await stub.CreateLabModel(pb.CreateLabModelRequest(
        name=unique("Terse SmolLM"), base_model=EMBEDDED, parameters=struct({"temperature": 0.0, "max_length": 24}),
    ))  # fmt: skip
    data = (await stub.GenerateLabText(pb.GenerateLabTextRequest(
        id=created.data.id, prompt="What is two plus two?",
    ))).data  # fmt: skip
    assert data.model_id == created.data.id and data.model_name == created.data.name
    assert (data.parameters.temperature, data.parameters.max_length) == (0.0, 24)  # the model's stored defaults
    assert data.text.startswith("What is two plus two?") and len(data.text) > len("What is two plus two?")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "Hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "Hi", "top_p": 0.0}, "top_p"),
        ({"prompt": "Hi", "top_k": -1}, "top_k"),
        ({"prompt": "Hi", "max_length": 0}, "max_length"),
        ({"prompt": "Hi", "max_length": 100_000}, "max_length"),
    ],
)
async def test_lab_generate_rejects_bad_parameters(stub, kw, field):
    code, _, fields, details = await rpc_error(stub.GenerateLabText(pb.GenerateLabTextRequest(id=EMBEDDED, **kw)))
    assert (code, fields, details["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, [field], field)


async def test_lab_generate_beyond_the_context_window_names_max_length(stub):
    prompt = "Tell me about the sea. " * 40
    code, reason, fields, details = await rpc_error(
        stub.GenerateLabText(pb.GenerateLabTextRequest(id=EMBEDDED, prompt=prompt, max_length=8192))
    )
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "CONTEXT_LENGTH_EXCEEDED", ["max_length"])
    assert details["field"] == "max_length" and details["value"] == 8192


async def test_research_create_update_round_trip(stub):
    identifier = unique("claude-3-5-sonnet")
    created = await stub.CreateResearchModel(pb.CreateResearchModelRequest(
        name="Claude 3.5 Sonnet", provider="anthropic", model_identifier=identifier, version="20241022",
        config=struct(CLAUDE_CONFIG),
    ))  # fmt: skip
    body = as_json(created)
    assert uuid.UUID(body["id"]) and RFC3339.match(body["created_at"]) and body["created_at"] == body["updated_at"]
    assert (body["name"], body["provider"], body["model_identifier"], body["version"]) == (
        "Claude 3.5 Sonnet", "anthropic", identifier, "20241022")  # fmt: skip
    assert body["config"] == {**CLAUDE_CONFIG, "backend": {"type": "onnx"}}

    # The lab family sees the same model under its slug, with the columns config determines.
    lab = (await stub.GetLabModel(pb.GetLabModelRequest(id=identifier))).data
    assert (lab.context_window, lab.provider, lab.status) == (200000, "anthropic", "UNAVAILABLE")
    assert lab.cost_per_token == pytest.approx((3.0 + 15.0) / 2 / 1e6)
    assert (await stub.GetLabModel(pb.GetLabModelRequest(id=body["id"]))).data.id == identifier  # UUID too

    updated = as_json(await stub.UpdateResearchModel(pb.UpdateResearchModelRequest(
        id=body["id"], version="20250101", config=struct({"max_context_window": 250000, "supports_vision": None}),
    )))  # fmt: skip
    assert updated["id"] == body["id"] and updated["version"] == "20250101" and updated["name"] == "Claude 3.5 Sonnet"
    expected = {k: v for k, v in CLAUDE_CONFIG.items() if k != "supports_vision"} | {"max_context_window": 250000}
    assert updated["config"] == {**expected, "backend": {"type": "onnx"}}
    assert (await stub.GetLabModel(pb.GetLabModelRequest(id=identifier))).data.context_window == 250000

    # Pointing it at an OpenAI-compatible endpoint (by slug) makes it servable; no secret is stored.
    served = as_json(await stub.UpdateResearchModel(pb.UpdateResearchModelRequest(
        id=identifier, name="Claude via proxy",
        config=struct({"backend": {"base_url": "https://proxy.example/v1", "api_key_env": "ANTHROPIC_KEY"}}),
    )))  # fmt: skip
    assert served["name"] == "Claude via proxy"
    assert served["config"]["backend"] == {"type": "openai", "base_url": "https://proxy.example/v1",
                                           "api_key_env": "ANTHROPIC_KEY"}  # fmt: skip
    assert (await stub.GetLabModel(pb.GetLabModelRequest(id=identifier))).data.status == "AVAILABLE"

    code, reason, _, _ = await rpc_error(stub.CreateResearchModel(pb.CreateResearchModelRequest(
        name="Again", provider="anthropic", model_identifier=identifier,
    )))  # fmt: skip
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "MODEL_EXISTS")


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"name": "", "provider": "p", "model_identifier": "m"}, "name"),
        ({"name": "n", "provider": "", "model_identifier": "m"}, "provider"),
        ({"name": "n", "provider": "p", "model_identifier": ""}, "model_identifier"),
        ({"name": "n", "provider": "p", "model_identifier": "m", "config": {"max_context_window": -5}},
         "config.max_context_window"),
        ({"name": "n", "provider": "p", "model_identifier": "m", "config": {"pricing": {"input_per_million": -1}}},
         "config.pricing.input_per_million"),
        ({"name": "n", "provider": "openai-compatible", "model_identifier": "m"}, "config.backend"),
        ({"name": "n", "provider": "triton", "model_identifier": "m", "config": {"backend": {"url": "h:8001"}}},
         "config.backend.model_name"),
    ],
)  # fmt: skip
async def test_research_create_rejects_bad_input(stub, kw, field):
    kw = dict(kw)
    if "config" in kw:
        kw["config"] = struct(kw["config"])
    code, _, fields, details = await rpc_error(stub.CreateResearchModel(pb.CreateResearchModelRequest(**kw)))
    assert (code, fields, details["field"]) == (grpc.StatusCode.INVALID_ARGUMENT, [field], field)


async def test_research_update_rejects_bad_input(stub):
    created = await stub.CreateResearchModel(pb.CreateResearchModelRequest(
        name="Upd", provider="acme", model_identifier=unique("acme-model"),
    ))  # fmt: skip
    for req, field in (
        (pb.UpdateResearchModelRequest(id=created.id, name=""), "name"),
        (pb.UpdateResearchModelRequest(id=created.id, config=struct({"backend": None})), "config.backend"),
        (pb.UpdateResearchModelRequest(id=created.id, config=struct({"capabilities": "chat"})), "config.capabilities"),
    ):
        code, _, fields, _ = await rpc_error(stub.UpdateResearchModel(req))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_research_list_offset_and_cursor_paging_with_provider_filter(stub):
    provider = unique("prov")
    ids = []
    for i in range(3):
        m = await stub.CreateResearchModel(pb.CreateResearchModelRequest(
            name=f"M{i}", provider=provider, model_identifier=f"{provider}-m{i}",
        ))  # fmt: skip
        ids.append(m.id)

    first = as_json(await stub.ListResearchModels(pb.ListResearchModelsRequest(provider=provider, limit=2, offset=0)))
    assert [m["id"] for m in first["data"]] == ids[:2]
    assert first["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    page = f"/models?limit=2&offset={{}}&provider={provider}"
    assert first["links"] == {
        "self": page.format(0), "next": page.format(2), "first": page.format(0), "last": page.format(2),
    }
    assert "page_info" not in first
    second = as_json(await stub.ListResearchModels(pb.ListResearchModelsRequest(provider=provider, limit=2, offset=2)))
    assert [m["id"] for m in second["data"]] == ids[2:] and second["links"]["next"] is None
    assert second["pagination"]["has_more"] is False

    # Cursor paging: the first request (no offset) carries page_info; `after` continues from its end_cursor.
    start = as_json(await stub.ListResearchModels(pb.ListResearchModelsRequest(provider=provider, limit=2)))
    assert start["page_info"]["has_next_page"] is True and start["page_info"]["has_previous_page"] is False
    after = as_json(await stub.ListResearchModels(pb.ListResearchModelsRequest(
        provider=provider, limit=2, after=start["page_info"]["end_cursor"],
    )))  # fmt: skip
    assert [m["id"] for m in after["data"]] == ids[2:]
    assert after["page_info"]["has_next_page"] is False and after["page_info"]["has_previous_page"] is True
    assert "pagination" not in after and "links" not in after

    everything = as_json(await stub.ListResearchModels(pb.ListResearchModelsRequest(limit=100)))
    assert EMBEDDED in {m["model_identifier"] for m in everything["data"]}

    for req, field in (
        (pb.ListResearchModelsRequest(limit=0), "limit"),
        (pb.ListResearchModelsRequest(limit=101), "limit"),
        (pb.ListResearchModelsRequest(offset=-1), "offset"),
        (pb.ListResearchModelsRequest(offset=0, after=start["page_info"]["end_cursor"]), "offset"),
        (pb.ListResearchModelsRequest(after="not-a-cursor"), "after"),
    ):
        code, _, fields, _ = await rpc_error(stub.ListResearchModels(req))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, [field])


async def test_providers_are_a_bare_json_array_of_built_ins_and_registered_ones(stub):
    await stub.CreateResearchModel(pb.CreateResearchModelRequest(
        name="Claude", provider="anthropic", model_identifier=unique("claude-3-haiku"),
    ))  # fmt: skip
    body = await stub.ListResearchProviders(pb.ListResearchProvidersRequest())
    assert body.content_type == "application/json"
    providers = json.loads(body.data)
    assert isinstance(providers, list)
    assert [p["name"] for p in providers[:3]] == ["local", "triton", "openai-compatible"]
    by_name = {p["name"]: p for p in providers}
    for p in providers:
        assert set(p) == {"name", "display_name", "description", "supported_models"} and p["description"]
    assert EMBEDDED in by_name["local"]["supported_models"]
    assert by_name["anthropic"]["display_name"] == "Anthropic"
    assert any(m.startswith("claude-3-haiku") for m in by_name["anthropic"]["supported_models"])
    assert all(len(set(p["supported_models"])) == len(p["supported_models"]) for p in providers)


@pytest.mark.parametrize(
    ("prompt", "answer", "text"),
    [
        ("The future of AI is", "bright.", "The future of AI is bright."),
        ("The future of AI is ", "bright.", "The future of AI is bright."),
        ("Hello, AI!", " Hello! How can I help?", "Hello, AI! Hello! How can I help?"),
        ("The future of AI is", "The future of AI is bright.", "The future of AI is bright."),
        ("the future of ai is", " The Future of AI is bright.", "The Future of AI is bright."),
        ("Hi", "", "Hi"),
    ],
)
def test_lab_text_is_the_prompt_followed_by_the_answer(prompt, answer, text):
    assert lab_text(prompt, answer) == text
