"""Structured outputs in the plan (openai/structured.py): which grammar a request gets, what it accepts (walked token
by token with a real byte-level tokenizer, as the engine does), and the 400s for schemas it cannot enforce."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.inference.domain import Grammar
from services.inference.engine.constraint import GrammarCompiler, GrammarError
from services.inference.openai import ProtocolError

from ..inference.tiny_model import build_tokenizer
from ._fakes import LIMITS, WEATHER, chat, chat_plan

GRAMMARS = replace(LIMITS, supports_grammar=True)
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"]}}}


@pytest.fixture(scope="module")
def compiler() -> GrammarCompiler:
    tok = build_tokenizer()
    return GrammarCompiler(tok.to_str(), tok.get_vocab_size(), [2])


@pytest.fixture(scope="module")
def accepts(compiler):
    tok = build_tokenizer()

    def check(grammar: Grammar, text: str) -> bool:
        """Does the grammar accept `text` as a complete answer (every token allowed, accepting at the end)?"""
        c = compiler.constraint(grammar)
        try:
            for token in tok.encode(text).ids:
                c.advance(token)
        except GrammarError:
            return False
        return c.accepting

    return check


def plan_for(**fields):
    return chat_plan(chat(**fields), GRAMMARS)[1]


def json_schema(schema: dict, strict: bool | None = True) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": strict}}


def test_json_schema_is_enforced_without_the_brace_prefill(accepts) -> None:
    plan = plan_for(response_format=json_schema(PERSON))
    grammar = plan.base.grammar
    assert grammar is not None and grammar.kind == "json_schema"
    assert plan.assistant_prefix == "" and not plan.prompt.endswith("{")  # the grammar writes the `{`
    assert "JSON Schema" in plan.prompt  # the model is still told what to write
    assert accepts(grammar, '{"name": "Bob", "age": 42}')
    assert accepts(grammar, '{"name":"Bob","age":42}')
    assert not accepts(grammar, '{"name": "Bob"}')  # required
    assert not accepts(grammar, '{"name": "Bob", "age": 4.5}')
    assert not accepts(grammar, '{"name": "Bob", "age": 42, "x": 1}')  # additionalProperties false
    assert not accepts(grammar, '{\n  "name": "Bob", "age": 42}')  # our compact layout: no runs of whitespace
    assert all(p.grammar == grammar for p in plan.sampling_params(10))


def test_json_object_is_any_object(accepts) -> None:
    grammar = plan_for(response_format={"type": "json_object"}).base.grammar
    assert grammar is not None
    assert accepts(grammar, '{"a": [1, true, null], "b": {"c": "d"}}')
    assert not accepts(grammar, "[1, 2]") and not accepts(grammar, "hello")


def test_without_a_grammar_backend_the_plan_prompts_as_before() -> None:
    _, plan = chat_plan(chat(response_format=json_schema(PERSON)))
    assert plan.base.grammar is None and plan.assistant_prefix == "{"


def test_named_tool_choice_constrains_the_arguments_after_the_prefill(accepts) -> None:
    plan = plan_for(tools=[WEATHER, TIME], tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert plan.assistant_prefix.endswith('"arguments": ')
    grammar = plan.base.grammar
    assert accepts(grammar, '{"zone": "UTC"}}]</tool_call>')
    assert not accepts(grammar, '{"zone": "PST"}}]</tool_call>')
    assert not accepts(grammar, '{"zone": "UTC"}}, {"name": "get_time", "arguments": {"zone": "UTC"}}]</tool_call>')
    assert "</tool_call>" not in plan.base.stop  # the grammar ends the answer; no stop string cuts arguments


def test_required_lets_the_model_pick_declared_functions_only(accepts) -> None:
    plan = plan_for(tools=[WEATHER, TIME], tool_choice="required")
    assert plan.assistant_prefix.endswith('{"name": "')
    grammar = plan.base.grammar
    assert accepts(grammar, 'get_weather", "arguments": {"city": "Paris"}}]</tool_call>')
    assert accepts(grammar, 'get_weather", "arguments": {"city": "Paris"}}, '
                            '{"name": "get_time", "arguments": {"zone": "CET"}}]</tool_call>')  # parallel calls
    assert not accepts(grammar, 'get_news", "arguments": {}}]</tool_call>')
    assert not accepts(grammar, 'get_weather", "arguments": {}}]</tool_call>')  # city is required
    single = plan_for(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False).base.grammar
    assert not accepts(single, 'get_weather", "arguments": {"city": "Paris"}}, '
                               '{"name": "get_time", "arguments": {"zone": "CET"}}]</tool_call>')


def test_auto_allows_text_or_a_valid_call_never_a_broken_one(accepts) -> None:
    grammar = plan_for(tools=[WEATHER, TIME], tool_choice="auto").base.grammar
    assert accepts(grammar, "It is sunny, I think.")
    assert accepts(grammar, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo"}}]</tool_call>')
    assert not accepts(grammar, '<tool_call>[{"name": "get_weather", "arguments": {}}]</tool_call>')
    assert not accepts(grammar, 'Let me check. <tool_call>[{"name": "nope"')
    with_json = plan_for(tools=[WEATHER], tool_choice="auto", response_format=json_schema(PERSON)).base.grammar
    assert accepts(with_json, '{"name": "Ann", "age": 3}')
    assert not accepts(with_json, "plain text")


def test_tool_choice_none_leaves_only_the_response_format() -> None:
    assert plan_for(tools=[WEATHER], tool_choice="none").base.grammar is None


@pytest.mark.parametrize(("schema", "strict", "named"), [
    ({"type": "array", "uniqueItems": True}, True, "uniqueItems"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, True, "if, then"),
    ({"not": {"type": "string"}}, True, "not"),
    ({"type": "strin"}, None, "not a valid JSON Schema"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=x)"}}}, True, "look-around"),
])
def test_schemas_that_cannot_be_enforced_are_400s_naming_the_problem(schema, strict, named) -> None:
    with pytest.raises(ProtocolError) as info:
        plan_for(response_format=json_schema(schema, strict))
    err = info.value
    assert err.status == 400 and err.param == "response_format.json_schema.schema"
    assert named in err.message and "'answer'" in err.message


def test_without_strict_unsupported_keywords_are_ignored(accepts) -> None:
    grammar = plan_for(response_format=json_schema({"type": "array", "items": {"type": "integer"},
                                                    "uniqueItems": True}, strict=None)).base.grammar
    assert grammar is not None and json.loads(grammar.text)["x-guidance"]["lenient"] is True
    assert accepts(grammar, "[1, 2]") and not accepts(grammar, '["a"]')


def test_function_parameters_that_cannot_be_enforced_name_the_function() -> None:
    tool = {"type": "function", "function": {"name": "f", "strict": True, "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}}
    with pytest.raises(ProtocolError) as info:
        plan_for(tools=[WEATHER, tool], tool_choice="required")
    assert info.value.param == "tools[1].function.parameters" and "'f'" in info.value.message
    assert "uniqueItems" in info.value.message
    assert info.value.code == "invalid_function_parameters"


def test_grammars_are_deterministic_text_so_the_engine_cache_hits() -> None:
    a = plan_for(tools=[WEATHER], tool_choice="required").base.grammar
    b = plan_for(tools=[WEATHER], tool_choice="required").base.grammar
    assert a == b
    assert json.loads(plan_for(response_format=json_schema(PERSON)).base.grammar.text)["x-guidance"]
