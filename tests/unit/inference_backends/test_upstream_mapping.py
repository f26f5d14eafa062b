"""The upstream backend's request building and response mapping (the wire tests are in tests/integration)."""

from __future__ import annotations

import datetime as dt

import pytest

from llmlab.runtime import InvalidArgument
from services.inference.backends import BackendRequest, remote_backend
from services.inference.backends.upstream import UpstreamBackend, choice_logprobs
from services.inference.domain import SamplingParams
from services.inference.models.registry import ModelRecord, validate_backend


def record(**kw) -> ModelRecord:
    now = dt.datetime.now(dt.UTC)
    base = dict(
        id="gpt-x",
        uuid="00000000-0000-0000-0000-000000000001",
        name="GPT X",
        provider="openai",
        base_model="",
        status="available",
        description="",
        model_size="",
        size_class="small",
        parameter_count=None,
        capabilities=["chat"],
        languages=[],
        category="chat",
        owned_by="openai",
        cost_per_token=0.0,
        input_cost_per_token=0.0,
        output_cost_per_token=0.0,
        max_tokens=256,
        context_window=4096,
        model_identifier="gpt-x-2025",
        version="",
        config={},
        parameters=None,
        format="remote",
        quantization=None,
        backend="openai",
        backend_config={"base_url": "http://127.0.0.1:9/v1", "api_key_env": "X_KEY"},
        artifact=None,
        created_at=now,
        updated_at=now,
    )
    base.update(kw)
    return ModelRecord(**base)


async def test_chat_body_maps_sampling_and_keeps_extras_out_by_default():
    backend = UpstreamBackend(record(), environ={"X_KEY": "k"})
    try:
        req = BackendRequest("r1", backend.model, SamplingParams(), messages=[{"role": "user", "content": "hi"}])
        body = backend.request_body(req)
        assert body == {
            "model": "gpt-x-2025",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": 16,
            "temperature": 1.0,
            "top_p": 1.0,
        }
        p = SamplingParams(
            temperature=0.2, top_k=5, stop=["\n"], seed=9, logprobs=True, top_logprobs=2, frequency_penalty=0.5
        )
        body = backend.request_body(BackendRequest("r2", backend.model, p, messages=[]))
        assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["top_k"] == 5
        assert body["seed"] == 9 and body["stop"] == ["\n"] and body["frequency_penalty"] == 0.5
        body = backend.request_body(BackendRequest("r3", backend.model, p, prompt="x"))
        assert body["prompt"] == "x" and body["logprobs"] == 2 and "messages" not in body
    finally:
        await backend.close()


def test_request_needs_exactly_one_of_prompt_and_messages():
    with pytest.raises(ValueError):
        BackendRequest("r", record())
    with pytest.raises(ValueError):
        BackendRequest("r", record(), prompt="a", messages=[])


def test_logprobs_mapping_chat_and_completions():
    chat = choice_logprobs(
        {
            "content": [
                {
                    "token": "Hi",
                    "logprob": -0.1,
                    "bytes": [72, 105],
                    "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}],
                }
            ]
        },
        chat=True,
    )
    assert chat[0].token == "Hi" and chat[0].bytes == [72, 105] and chat[0].top_logprobs[0].logprob == -0.1
    comp = choice_logprobs(
        {"tokens": [" a"], "token_logprobs": [-0.5], "top_logprobs": [{" a": -0.5, " b": -1.5}]}, chat=False
    )
    assert comp[0].token == " a" and comp[0].logprob == -0.5 and [t.token for t in comp[0].top_logprobs] == [" a", " b"]
    assert choice_logprobs(None, chat=True) == []


def test_backend_config_validation_never_stores_secrets():
    validate_backend("openai", {"base_url": "https://api.example.com/v1", "api_key_env": "EXAMPLE_KEY"})
    validate_backend("triton", {"url": "triton:8001", "model_name": "m"})
    validate_backend("onnx", {})
    with pytest.raises(InvalidArgument, match="must not hold credentials"):
        validate_backend("openai", {"base_url": "https://x/v1", "api_key": "sk-123"})
    with pytest.raises(InvalidArgument, match="base_url"):
        validate_backend("openai", {"base_url": "ftp://x"})
    with pytest.raises(InvalidArgument, match="environment variable"):
        validate_backend("openai", {"base_url": "https://x/v1", "api_key_env": "not a name"})
    with pytest.raises(InvalidArgument, match="model_name"):
        validate_backend("triton", {"url": "t:8001"})
    with pytest.raises(InvalidArgument, match="backend must be"):
        validate_backend("llamacpp", {})


async def test_remote_backend_factory():
    b = remote_backend(record())
    assert isinstance(b, UpstreamBackend)
    await b.close()
    t = remote_backend(record(backend="triton", backend_config={"url": "127.0.0.1:1", "model_name": "m"}))
    assert type(t).__name__ == "TritonBackend"
    await t.close()
    with pytest.raises(ValueError):
        remote_backend(record(backend="onnx", backend_config={}))


async def test_native_chat_plan_sends_tools_tool_choice_and_response_format_upstream():
    """An upstream applies tools and JSON mode itself: the plan writes nothing into the prompt and the body carries
    OpenAI's own fields (issue 8: no throwaway plan for remote models)."""
    from services.inference.openai import EngineLimits, build_chat_plan, parse_chat_request

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}
    req = parse_chat_request({
        "model": "gpt-x", "messages": [{"role": "user", "content": "weather?"}], "tools": [tool],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "response_format": {"type": "json_object"}, "max_tokens": 20,
    })
    plan = build_chat_plan(req, None, EngineLimits(context_length=4096))
    params = plan.sampling_params(0)
    assert plan.prompt == "" and plan.assistant_prefix == "" and params[0].stop == []
    backend = UpstreamBackend(record(), environ={"X_KEY": "k"})
    try:
        body = backend.request_body(BackendRequest("r1", backend.model, params[0], messages=plan.messages,
                                                   **plan.native))
    finally:
        await backend.close()
    assert body["messages"] == [{"role": "user", "content": "weather?"}]
    assert body["tools"][0]["function"]["name"] == "get_weather"
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {"type": "json_object"} and body["max_tokens"] == 20


def test_streamed_tool_call_fragments_become_the_block_the_plan_parses():
    from services.inference.backends.upstream import ToolCallAccumulator
    from services.inference.openai import parse_chat_request
    from services.inference.openai.tools import ToolSpec, parse_tool_output

    calls = ToolCallAccumulator()
    assert not calls
    calls.feed([{"index": 0, "id": "call_1", "function": {"name": "get_", "arguments": '{"ci'}}])
    calls.feed([{"index": 0, "function": {"name": "weather", "arguments": 'ty": "Paris"}'}}])
    req = parse_chat_request({"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [
        {"type": "function", "function": {"name": "get_weather"}}]})
    spec = ToolSpec(functions=tuple(req.tools), mode="auto", forced_name=None, parallel=True, legacy=False)
    parsed = parse_tool_output(calls.as_text(), spec)
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [("get_weather", '{"city":"Paris"}')]
