"""`POST /v1/moderations` through Envoy with the unmodified `openai` SDK: OpenAI's shape with all eleven categories,
scores from the classifier, string and list input; bad input answers 400 with request_id."""

from __future__ import annotations

import openai
import pytest

from services.inference.moderation.classifier import CATEGORIES


@pytest.fixture(scope="module")
def sdk(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


async def test_moderation_with_the_sdk(sdk):
    r = await sdk.moderations.create(input="I want to hurt someone, I'll stab him tonight",
                                     model="text-moderation-latest")
    assert r.id.startswith("modr-") and r.model == "text-moderation-latest" and len(r.results) == 1
    result = r.results[0]
    scores = result.category_scores.model_dump(by_alias=True)
    flags = result.categories.model_dump(by_alias=True)
    assert set(CATEGORIES) <= set(scores) and set(CATEGORIES) <= set(flags)
    assert all(0.0 <= scores[c] <= 1.0 for c in CATEGORIES)
    assert result.flagged and flags["violence"] and scores["violence"] > 0.5

    many = await sdk.moderations.create(input=["Could you summarise this report?", "I'm going to kill myself"],
                                        model="omni-moderation-latest")
    benign, harm = many.results
    assert not benign.flagged and harm.flagged and harm.categories.self_harm_intent


async def test_moderation_bad_input(http):
    for body, param in [({"input": ""}, "input"), ({"input": []}, "input"), ({"model": "text-moderation-latest"},
                                                                               "input"),
                        ({"input": ["ok", ""]}, "input[1]"), ({"input": "x" * 40_000}, "input")]:
        r = await http.post("/v1/moderations", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param and r.json()["request_id"]
    r = await http.post("/v1/moderations", json={"input": "hi", "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await http.post("/v1/moderations", json={"input": "hi", "model": "smollm2-135m-instruct"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


async def test_upstream_moderation_backend(platform, http, database_url, redis_url, schema, redis_prefix,
                                           monkeypatch):
    """A registered OpenAI-compatible upstream as the moderation model: a second inference service (in this
    process) whose model `upstream-moderation` is the platform's own /v1 through Envoy; its answers are the
    platform's."""
    import grpc
    from google.protobuf import struct_pb2

    from llmlab.inference.v1 import openai_service_pb2 as pb
    from llmlab.inference.v1 import openai_service_pb2_grpc as pb_grpc
    from llmlab.runtime import load_settings
    from llmlab.runtime.server import ServiceApp
    from services.inference.app import SPEC
    from services.inference.models.registry import ModelRegistry, NewModel

    monkeypatch.setenv("LLMLAB_TEST_UPSTREAM_KEY", platform.api_key)
    settings = load_settings(SPEC.settings_cls, "inference", environ={}, port=0, database_url=database_url,
                             redis_url=redis_url, db_schema=schema, redis_prefix=redis_prefix,
                             shutdown_grace_seconds=1.0, load_on_start=False)
    app = ServiceApp(SPEC, settings)
    await app.start()
    try:
        await ModelRegistry(app.db).create(NewModel(
            id="upstream-moderation", name="moderation through the platform's /v1", provider="openai-compatible",
            backend="openai", backend_config={"base_url": f"{platform.gateway_url}/v1",
                                              "api_key_env": "LLMLAB_TEST_UPSTREAM_KEY",
                                              "model": "text-moderation-latest"}))
        texts = ["I will shoot you tomorrow", "Have a nice weekend"]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            reply = await pb_grpc.OpenAIServiceStub(channel).CreateModeration(pb.CreateModerationRequest(
                input=struct_pb2.Value(list_value=struct_pb2.ListValue(
                    values=[struct_pb2.Value(string_value=t) for t in texts])),
                model="upstream-moderation"))
        direct = (await http.post("/v1/moderations", json={"input": texts})).json()
        assert reply.model == "upstream-moderation" and len(reply.results) == 2
        for got, want in zip(reply.results, direct["results"], strict=True):
            assert got.flagged == want["flagged"]
            assert dict(got.categories) == want["categories"]
            assert all(abs(got.category_scores[c] - want["category_scores"][c]) < 1e-9 for c in CATEGORIES)
        assert reply.results[0].flagged and not reply.results[1].flagged
    finally:
        await app.stop()
