"""Structured outputs through the plan and the engine on the real SmolLM2-135M (no gateway): the plan's grammar for a
request, the engine enforcing it per sequence in a shared batch, the answer read back as the servicer renders it."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator

import jsonschema
import pytest

from services.inference.domain import GenerationRequest
from services.inference.engine import Engine, EngineConfig, collect
from services.inference.openai import EngineLimits, build_chat_plan, parse_chat_request
from services.inference.openai.render import ChoiceResult, render_chat_completion

from .test_engine_real import model_dir

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[Engine]:
    engine = Engine.from_dir(model_dir(), EngineConfig(max_batch=8, threads=os.cpu_count()))
    await engine.start()
    yield engine
    await engine.stop()


async def answer(engine: Engine, body: dict) -> tuple[dict, GenerationRequest]:
    """One chat request as the servicer runs it: plan (with grammars), engine, rendered choice."""
    req = parse_chat_request({"model": "m", **body})
    limits = EngineLimits(context_length=engine.max_seq_len, supports_grammar=True)
    plan = build_chat_plan(req, lambda turns, gen: engine.tokenizer.render_chat(turns, add_generation_prompt=gen),
                           limits)
    ids = engine.tokenizer.encode(plan.prompt)
    gen = GenerationRequest("s", ids, plan.sampling_params(len(ids))[0])
    out = await collect(engine.generate(gen))
    result = ChoiceResult()
    result.add(out)
    return render_chat_completion(plan, [result], model="m")["choices"][0], gen


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_schema_answers_are_valid_and_plain_neighbours_unchanged(engine: Engine) -> None:
    plain = {"messages": user("Name three colors."), "temperature": 0, "max_tokens": 24}
    alone, _ = await answer(engine, plain)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": PERSON}}
    people = ["Ann is 31.", "Bob, aged 45, bakes bread.", "Cy turned 27.", "Di is a 60 year old pilot.", "Ed is 19."]
    bodies = [plain, *({"messages": user(f"Extract the person: {p}"), "response_format": fmt, "temperature": 0.8,
                        "seed": i, "max_tokens": 40} for i, p in enumerate(people)), plain]
    choices = await asyncio.gather(*(answer(engine, b) for b in bodies))
    assert choices[0][0]["message"]["content"] == alone["message"]["content"]
    assert choices[-1][0]["message"]["content"] == alone["message"]["content"]
    for choice, _ in choices[1:-1]:
        jsonschema.validate(json.loads(choice["message"]["content"]), PERSON)
        assert choice["finish_reason"] == "stop"


async def test_required_tool_call_has_valid_arguments(engine: Engine) -> None:
    choice, gen = await answer(engine, {"messages": user("What's the weather like in Rome?"), "tools": [WEATHER],
                                        "tool_choice": "required", "temperature": 0, "max_tokens": 40})
    assert gen.params.grammar is not None
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    call = choice["message"]["tool_calls"][0]["function"]
    assert call["name"] == "get_weather"
    jsonschema.validate(json.loads(call["arguments"]), WEATHER["function"]["parameters"])
