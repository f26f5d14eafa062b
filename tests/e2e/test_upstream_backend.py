"""The OpenAI-compatible upstream backend against a real OpenAI-compatible server: the platform's own /v1.

A second inference service runs in this test process (port 0, its own schema) with a model registered as
`backend: openai` whose base_url is the running platform's gateway; generating with it goes upstream through
Envoy, auth included, to the embedded model - and the answers must match what the platform gives directly."""

import json

import grpc
import pytest

from llmlab.inference.v1 import inference_service_pb2 as pb
from llmlab.inference.v1 import inference_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.inference.app import SPEC
from services.inference.models.registry import ModelRegistry, NewModel

KEY_ENV = "LLMLAB_TEST_UPSTREAM_KEY"


@pytest.fixture
async def proxy_inference(platform, database_url, redis_url, schema, redis_prefix, monkeypatch):
    monkeypatch.setenv(KEY_ENV, platform.api_key)  # the backend reads the key from its process environment
    settings = load_settings(
        SPEC.settings_cls, "inference", environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=schema, redis_prefix=redis_prefix, shutdown_grace_seconds=1.0, load_on_start=False,
    )
    app = ServiceApp(SPEC, settings)
    await app.start()
    registry = ModelRegistry(app.db)
    await registry.create(NewModel(
        id="via-gateway", name="SmolLM2 through the platform's own /v1", provider="openai-compatible",
        backend="openai", context_window=8192, max_tokens=1024,
        backend_config={"base_url": f"{platform.gateway_url}/v1", "api_key_env": KEY_ENV,
                        "model": "smollm2-135m-instruct"},
    ))
    yield app
    await app.stop()


async def test_generate_through_the_upstream_matches_the_platform(proxy_inference, platform):
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="What is the capital of France? Answer in one word.")],
        sampling=pb.SamplingParams(temperature=0, max_tokens=12),
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy_inference.port}") as channel:
        request.model = "via-gateway"
        proxied = await pb_grpc.InferenceServiceStub(channel).Generate(request)
    async with platform.channel("inference") as channel:
        request.model = "smollm2-135m-instruct"
        direct = await pb_grpc.InferenceServiceStub(channel).Generate(request)
    assert proxied.backend == "openai" and proxied.model == "via-gateway"
    assert proxied.choices[0].text == direct.choices[0].text and "paris" in proxied.choices[0].text.lower()
    assert proxied.usage.completion_tokens == direct.usage.completion_tokens > 0


async def test_streaming_and_upstream_errors(proxy_inference, monkeypatch):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy_inference.port}") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        deltas, done = [], None
        async for part in stub.GenerateStream(pb.GenerateStreamRequest(
            model="via-gateway", prompt="Say hello.", sampling=pb.SamplingParams(temperature=0, max_tokens=8),
        )):
            deltas.append(part.delta)
            if part.finish_reason:
                done = part
        assert "".join(deltas) and done is not None and done.usage.completion_tokens > 0

        monkeypatch.setenv(KEY_ENV, "sk-not-a-key")  # the upstream refuses our credential: 502 to our client
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Generate(pb.GenerateRequest(model="via-gateway", prompt="x",
                                                   sampling=pb.SamplingParams(max_tokens=2)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


async def _chat_via_proxy(proxy_inference, body: dict) -> dict:
    from google.api import httpbody_pb2

    from llmlab.inference.v1 import openai_service_pb2 as oai_pb
    from llmlab.inference.v1 import openai_service_pb2_grpc as oai_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy_inference.port}") as channel:
        request = oai_pb.CreateChatCompletionRequest(
            http_body=httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(body).encode()))
        parts = [p.data async for p in oai_grpc.OpenAIServiceStub(channel).CreateChatCompletion(request)]
    return json.loads(b"".join(parts))


async def test_tools_and_tool_choice_reach_the_upstream(proxy_inference):
    """The upstream (the platform's /v1) receives tools and tool_choice and answers structured tool_calls, which
    come back to our client as tool_calls - not as text, and not with the tools dropped."""
    weather = {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    answer = await _chat_via_proxy(proxy_inference, {
        "model": "via-gateway", "temperature": 0, "max_tokens": 40,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": [weather], "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    })
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls", answer
    calls = choice["message"]["tool_calls"]
    assert calls[0]["function"]["name"] == "get_weather" and calls[0]["id"].startswith("call_")
    assert isinstance(json.loads(calls[0]["function"]["arguments"]), dict)


async def test_response_format_reaches_the_upstream(proxy_inference):
    answer = await _chat_via_proxy(proxy_inference, {
        "model": "via-gateway", "temperature": 0, "max_tokens": 40,
        "messages": [{"role": "user", "content": "Give the capital of France as JSON with the key city."}],
        "response_format": {"type": "json_object"},
    })
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"]), dict), answer
