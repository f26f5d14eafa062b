"""Structured outputs through Envoy with real, unmodified clients against the embedded SmolLM2-135M on our engine:
the `openai` SDK's `chat.completions.parse` with a Pydantic model and with Pydantic function tools, LangChain's
`with_structured_output` (json_schema and function_calling), streaming, the max_tokens cut-off and the 400s
(docs/structured-outputs.md). Fifty different extraction prompts; the SDK's are sampled (temperature 0.8, a seed
per request), LangChain's greedy (temperature 0, as extraction chains usually run): each answer must come back
parsed."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

MODEL = "smollm2-135m-instruct"
RUNS = 50


class Person(BaseModel):
    name: str
    age: int


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


NAMES = ["Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace", "Hugo", "Ivy", "Jack"]
FORMS = ["{n} is {a}.", "{n}, aged {a}, is a baker.", "{n} turned {a} last week.", "{n} is a {a} year old pilot.",
         "{n} ({a}) studies maths."]
PEOPLE = [FORMS[i % 5].format(n=NAMES[i % 10], a=18 + (i * 7) % 60) for i in range(RUNS)]  # fifty different texts
CITIES = ["Paris", "Berlin", "Tokyo", "Lima", "Oslo"]


def extract(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Extract the person: {PEOPLE[i % len(PEOPLE)]}"}]


def weather(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"What is the weather in {CITIES[i % len(CITIES)]}?"}]


@pytest.fixture(scope="module")
def aclient(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


@pytest.fixture(scope="module")
def llm(platform):
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key,
                      temperature=0, max_tokens=48, max_retries=0)


async def test_sdk_parse_returns_the_pydantic_model_every_time(aclient) -> None:
    async def one(i: int) -> Person | None:
        r = await aclient.chat.completions.parse(model=MODEL, messages=extract(i), response_format=Person,
                                                 temperature=0.8, seed=i, max_tokens=48)
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.refusal is None
        return r.choices[0].message.parsed

    parsed = await asyncio.gather(*(one(i) for i in range(RUNS)))
    assert all(isinstance(p, Person) for p in parsed)
    assert len({(p.name, p.age) for p in parsed}) > 1  # sampled: different answers, each one valid


async def test_langchain_structured_output_both_methods_every_time(llm) -> None:
    half = RUNS // 2
    for offset, method in ((0, "json_schema"), (half, "function_calling")):
        chain = llm.with_structured_output(Person, method=method)
        results = await chain.abatch([extract(offset + i) for i in range(half)], config={"max_concurrency": 8})
        assert all(isinstance(p, Person) for p in results), (method, results)


async def test_sdk_function_tool_arguments_parse_into_the_model(aclient) -> None:
    tools = [openai.pydantic_function_tool(GetWeather)]

    async def one(i: int, choice) -> GetWeather:
        r = await aclient.chat.completions.parse(model=MODEL, messages=weather(i), tools=tools, tool_choice=choice,
                                                 temperature=0.8, seed=i, max_tokens=48)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls" and c.message.content is None and c.message.refusal is None
        call = c.message.tool_calls[0]
        assert call.id.startswith("call_") and call.type == "function" and call.function.name == "GetWeather"
        return call.function.parsed_arguments

    named = {"type": "function", "function": {"name": "GetWeather"}}
    args = await asyncio.gather(*(one(i, "required" if i % 2 else named) for i in range(10)))
    assert all(isinstance(a, GetWeather) for a in args)


async def test_auto_is_text_or_a_valid_call(aclient) -> None:
    tools = [openai.pydantic_function_tool(GetWeather)]
    prompts = [weather(0), [{"role": "user", "content": "Say hello to me."}]]
    for i in range(6):
        r = await aclient.chat.completions.create(model=MODEL, messages=prompts[i % 2], tools=tools,
                                                  tool_choice="auto", temperature=0.8, seed=i, max_tokens=48)
        c = r.choices[0]
        if c.message.tool_calls:
            assert c.finish_reason == "tool_calls"
            GetWeather.model_validate_json(c.message.tool_calls[0].function.arguments)
        else:
            assert c.message.content and "<tool_call>" not in c.message.content


async def test_streamed_schema_output_and_streamed_tool_call(aclient) -> None:
    schema = Person.model_json_schema() | {"additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": schema}}
    stream = await aclient.chat.completions.create(model=MODEL, messages=extract(1), response_format=fmt,
                                                   temperature=0, max_tokens=48, stream=True)
    text, reasons = [], []
    async for chunk in stream:
        for c in chunk.choices:
            text.append(c.delta.content or "")
            reasons += [c.finish_reason] if c.finish_reason else []
    assert reasons == ["stop"]
    Person.model_validate_json("".join(text))

    tools = [openai.pydantic_function_tool(GetWeather)]
    raw = await aclient.chat.completions.create(model=MODEL, messages=weather(3), tools=tools, tool_choice="required",
                                                temperature=0, max_tokens=48, stream=True)
    deltas = [c.choices[0].delta.tool_calls[0] async for c in raw if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0].id and deltas[0].function.name == "GetWeather" and deltas[0].function.arguments == ""
    assert len(deltas) > 3  # the arguments arrive in fragments, as they are generated
    GetWeather.model_validate_json("".join(d.function.arguments or "" for d in deltas))

    async with aclient.chat.completions.stream(
        model=MODEL, messages=weather(2), tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required",
        temperature=0, max_tokens=48,
    ) as s:
        final = await s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls" and isinstance(call.function.parsed_arguments, GetWeather)


async def test_max_tokens_inside_the_json_is_length(aclient) -> None:
    r = await aclient.chat.completions.create(
        model=MODEL, messages=extract(0), max_tokens=3, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": Person.model_json_schema()}},
    )
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.content.startswith("{")
    with pytest.raises(openai.LengthFinishReasonError):
        await aclient.chat.completions.parse(model=MODEL, messages=extract(0), response_format=Person, max_tokens=3)


@pytest.mark.parametrize(("extra", "param", "needle"), [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "strict": True, "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}},
     "response_format.json_schema.schema", "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strng"}}}},
     "response_format.json_schema.schema", "not a valid JSON Schema"),
    ({"tools": [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"a": {"not": {"type": "string"}}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters", "not"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice", "'g'"),
])
async def test_schemas_we_cannot_enforce_are_400s_in_openai_shape(http, extra, param, needle) -> None:
    r = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": extract(0), **extra})
    assert r.status_code == 400, r.text
    body = r.json()
    err = body["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and needle in err["message"]
    assert body["request_id"] == r.headers["x-request-id"]


async def test_one_constrained_request_leaves_its_batch_neighbours_alone(aclient, http: httpx.AsyncClient) -> None:
    plain = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colors."}], "temperature": 0,
             "max_tokens": 24}
    alone = (await http.post("/v1/chat/completions", json=plain)).json()["choices"][0]["message"]["content"]
    together = await asyncio.gather(
        http.post("/v1/chat/completions", json=plain),
        aclient.chat.completions.parse(model=MODEL, messages=extract(2), response_format=Person, max_tokens=48),
        http.post("/v1/chat/completions", json=plain),
    )
    assert together[0].json()["choices"][0]["message"]["content"] == alone
    assert together[2].json()["choices"][0]["message"]["content"] == alone
    assert isinstance(together[1].choices[0].message.parsed, Person)
    assert json.loads(together[1].choices[0].message.content)


async def test_metrics_show_the_grammar_cache(http, aclient) -> None:
    for i in range(2):  # the same schema twice: at most one compile, at least one cached start
        await aclient.chat.completions.parse(model=MODEL, messages=extract(i), response_format=Person, max_tokens=48)
    text = (await http.get("/metrics")).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("llmlab_engine_grammar") and f'model="{MODEL}"' in line}
    assert values["llmlab_engine_grammars_cached"] >= 1
    assert values["llmlab_engine_grammar_cache_hits_total"] >= 1 and values["llmlab_engine_grammar_compiles_total"] >= 1
