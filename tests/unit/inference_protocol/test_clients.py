"""The official `openai` SDK and LangChain's ChatOpenAI against our protocol, offline: their real HTTP requests are
parsed by our parser and answered by our renderer through an in-memory transport."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx2
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from services.inference.openai import ChatPlan, ModelInfo

from ._fakes import FakeServer


@tool
def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    return f"sunny in {city}"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'
USER = [{"role": "user", "content": "Say hello"}]


def langchain(server: FakeServer, **kwargs) -> ChatOpenAI:
    return ChatOpenAI(model="smollm2-135m-instruct", api_key="sk-test", base_url="http://llmlab.test/v1",
                      max_retries=0, http_client=httpx2.Client(transport=server.transport()), **kwargs)


# --- openai SDK --------------------------------------------------------------------------------------------------


def test_sdk_chat() -> None:
    server = FakeServer("Hello there!")
    resp = server.client().chat.completions.create(model="smollm2-135m-instruct", messages=USER, temperature=0.2,
                                                   max_tokens=32, seed=3, stop=["\n\n"])
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.choices[0].message.content == "Hello there!"
    assert resp.choices[0].message.role == "assistant" and resp.choices[0].finish_reason == "stop"
    assert resp.usage is not None and resp.usage.total_tokens == resp.usage.prompt_tokens + 4
    plan = server.plans[0]
    [params] = plan.sampling_params(10)
    assert (params.temperature, params.max_tokens, params.seed, params.stop) == (0.2, 32, 3, ["\n\n"])


def test_sdk_chat_stream_matches_the_non_streamed_answer() -> None:
    server = FakeServer("Streaming works, token by token.")
    client = server.client()
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streaming works, token by token."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 11
    assert len({c.id for c in chunks}) == 1
    plain = client.chat.completions.create(model="m", messages=USER)
    assert plain.choices[0].message.content == text


def test_sdk_stream_helper_accumulates_n_choices() -> None:
    server = FakeServer(lambda plan, i: f"answer number {i}")
    with server.client().chat.completions.stream(model="m", messages=USER, n=2) as stream:
        final = stream.get_final_completion()
    assert [c.message.content for c in final.choices] == ["answer number 0", "answer number 1"]


def test_sdk_tool_calls() -> None:
    server = FakeServer(CALL)
    resp = server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "Paris?"}],
                                                   tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")


def test_sdk_streamed_tool_calls_accumulate_with_the_sdks_helper() -> None:
    server = FakeServer("Checking. " + CALL, size=2)
    with server.client().chat.completions.stream(model="m", messages=[{"role": "user", "content": "Paris?"}],
                                                 tools=[WEATHER_TOOL]) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking. "
    assert message.tool_calls and message.tool_calls[0].function.arguments == '{"city":"Paris"}'


def test_sdk_tool_conversation_round_trip() -> None:
    server = FakeServer(CALL)
    client = server.client()
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    call = first.choices[0].message.tool_calls[0]
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "sunny"})
    server.reply = lambda plan, i: "It is sunny in Paris."
    second = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert second.choices[0].message.content == "It is sunny in Paris."
    prompt = server.plans[-1].prompt
    assert '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>' in prompt
    assert '<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>' in prompt


def test_sdk_legacy_function_call() -> None:
    server = FakeServer(CALL)
    resp = server.client().chat.completions.create(model="m", messages=USER, functions=[WEATHER_TOOL["function"]],
                                                   function_call={"name": "get_weather"})
    assert resp.choices[0].finish_reason == "function_call"
    assert resp.choices[0].message.function_call is not None
    assert resp.choices[0].message.function_call.name == "get_weather"


def test_sdk_parse_with_a_pydantic_response_format() -> None:
    class City(BaseModel):
        name: str
        population: int

    def reply(plan: ChatPlan, i: int) -> str:
        assert plan.assistant_prefix == "{" and '"population"' in plan.prompt
        return '"name": "Paris", "population": 2100000} and some chatter'

    server = FakeServer(reply)
    parsed = server.client().chat.completions.parse(model="m", messages=USER, response_format=City)
    assert parsed.choices[0].message.parsed == City(name="Paris", population=2100000)
    assert server.bodies[0]["response_format"]["type"] == "json_schema"


def test_sdk_logprobs() -> None:
    server = FakeServer("abcdef")
    resp = server.client().chat.completions.create(model="m", messages=USER, logprobs=True, top_logprobs=2)
    content = resp.choices[0].logprobs.content
    assert [t.token for t in content] == ["abc", "def"]
    assert content[0].bytes == [97, 98, 99] and len(content[0].top_logprobs) == 2


def test_sdk_completions() -> None:
    server = FakeServer(" in a land far away")
    client = server.client()
    resp = client.completions.create(model="m", prompt=["Once upon a time", "Long ago"], n=2, max_tokens=8)
    assert resp.object == "text_completion" and resp.id.startswith("cmpl-")
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    assert all(c.text == " in a land far away" for c in resp.choices)
    echo = client.completions.create(model="m", prompt="Once upon a time", echo=True)
    assert echo.choices[0].text == "Once upon a time in a land far away"
    chunks = list(client.completions.create(model="m", prompt="Once", stream=True, logprobs=2))
    assert "".join(c.choices[0].text for c in chunks) == " in a land far away"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[0].choices[0].logprobs is not None and chunks[0].choices[0].logprobs.tokens == [" in"]


def test_sdk_raises_our_400s_with_param_and_code() -> None:
    client = FakeServer().client()
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=[])
    assert info.value.status_code == 400
    assert info.value.param == "messages" and info.value.code == "empty_array"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="m", messages=USER, tools=[{"type": "function",
                                                                          "function": {"name": "bad name"}}])
    assert info.value.param == "tools[0].function.name"


def test_sdk_raises_an_in_band_stream_error() -> None:
    from services.inference.domain import GenerationEvent
    from services.inference.openai.render import ChatCompletionStream

    def handler(request: httpx2.Request) -> httpx2.Response:
        from ._fakes import chat_plan

        _, plan = chat_plan(json.loads(request.content))
        stream = ChatCompletionStream(plan, model="m")
        frames = stream.start() + stream.feed(0, GenerationEvent(text="Hel"))
        frames += stream.feed(0, GenerationEvent(finish_reason="error", error="engine died"))
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=iter(frames))

    client = openai.OpenAI(api_key="k", base_url="http://t/v1", max_retries=0,
                           http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))
    got = []
    with pytest.raises(openai.APIError) as info:
        for chunk in client.chat.completions.create(model="m", messages=USER, stream=True):
            got.append(chunk.choices[0].delta.content)
    assert got == ["", "Hel"]
    assert "The server had an error" in info.value.message


def test_sdk_lists_models_with_seed_003_fields() -> None:
    server = FakeServer()
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    server.models = [
        ModelInfo(id="smollm2-135m-instruct", name="SmolLM2 135M Instruct", provider="local", category="chat",
                  created_at=at, updated_at=at, context_length=8192, max_output_tokens=2048, size="small",
                  capabilities=("text-generation", "chat", "function-calling"), languages=("en",)),
        ModelInfo(id="gpt-4o-mini", name="GPT-4o mini", provider="openai", category="chat", created_at=at,
                  updated_at=at, size="medium"),
    ]
    page = server.client().models.list()
    assert [m.id for m in page.data] == ["gpt-4o-mini", "smollm2-135m-instruct"]
    local = page.data[1]
    assert (local.object, local.owned_by, local.created) == ("model", "llmlab", int(at.timestamp()))
    assert local.model_extra is not None and local.model_extra["context_length"] == 8192


# --- LangChain ---------------------------------------------------------------------------------------------------


def test_langchain_invoke_and_stream() -> None:
    server = FakeServer("Hi from the lab.")
    llm = langchain(server, temperature=0)
    msg = llm.invoke([SystemMessage("Be nice."), HumanMessage("Hello")])
    assert isinstance(msg, AIMessage) and msg.content == "Hi from the lab."
    assert msg.response_metadata["finish_reason"] == "stop"
    assert msg.usage_metadata is not None and msg.usage_metadata["output_tokens"] == 6
    chunks = list(langchain(server, stream_usage=True).stream("Hello"))
    assert "".join(c.content for c in chunks) == "Hi from the lab."
    assert any(c.usage_metadata for c in chunks)
    assert server.bodies[-1]["stream"] is True


def test_langchain_bind_tools_and_tool_message_round_trip() -> None:
    server = FakeServer(CALL)
    llm = langchain(server).bind_tools([get_weather])
    ai = llm.invoke("What's the weather in Paris?")
    assert ai.tool_calls == [{"name": "get_weather", "args": {"city": "Paris"}, "id": ai.tool_calls[0]["id"],
                              "type": "tool_call"}]
    assert server.bodies[0]["tools"][0]["function"]["name"] == "get_weather"
    server.reply = lambda plan, i: "It is sunny in Paris."
    final = llm.invoke([HumanMessage("What's the weather in Paris?"), ai,
                        ToolMessage("sunny in Paris", tool_call_id=ai.tool_calls[0]["id"])])
    assert final.content == "It is sunny in Paris." and final.tool_calls == []


def test_langchain_streamed_tool_calls() -> None:
    server = FakeServer(CALL, size=4)
    llm = langchain(server).bind_tools([get_weather], tool_choice="get_weather")
    merged = None
    for chunk in llm.stream("Weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert server.bodies[0]["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_langchain_structured_output() -> None:
    class Answer(BaseModel):
        answer: str
        confidence: float

    server = FakeServer('"answer": "Paris", "confidence": 0.9}')
    result = langchain(server).with_structured_output(Answer).invoke("Capital of France?")
    assert result == Answer(answer="Paris", confidence=0.9)
