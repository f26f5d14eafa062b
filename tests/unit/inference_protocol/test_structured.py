"""Structured outputs in the plan (openai/structured.py): which grammar a request gets, what it accepts (walked token
by token with a real byte-level tokenizer, as the engine does), and the 400s for schemas it cannot enforce."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from openai.types.chat import ChatCompletionChunk

from services.inference.domain import Grammar
from services.inference.engine.constraint import GrammarCompiler, GrammarError
from services.inference.openai import ProtocolError
from services.inference.openai.render import ChatCompletionStream, ChoiceResult, render_chat_completion

from ..inference.tiny_model import build_tokenizer
from ._fakes import LIMITS, WEATHER, chat, chat_plan, events, sse_payloads

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
    assert not accepts(grammar, '{\n  "zone": "UTC"}}]</tool_call>')  # our layout inside the call's %json too
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


# -- reading constrained tool calls as they stream -----------------------------------------------------------------

TWO_CALLS = ('<tool_call>[{"name": "get_weather", "arguments": {"city": "New York", "n": [1, 2]}}, '
             '{"name": "get_time", "arguments": {"zone": "UTC"}}]</tool_call>')


def constrained_stream(text: str, size: int, *, finish: str = "stop", **fields):
    """SSE chunks and the non-streamed body for the same generated text under a constrained tools plan."""
    _, plan = chat_plan(chat(tools=[WEATHER, TIME], **fields), GRAMMARS)
    assert plan.base.grammar is not None
    generated = text[len(plan.assistant_prefix):]
    stream = ChatCompletionStream(plan, model="m", created=1, completion_id="chatcmpl-x")
    frames = stream.start()
    for event in events(generated, size=size, finish=finish):
        frames += stream.feed(0, event)
    frames += stream.close()
    body = render_chat_completion(plan, [ChoiceResult.collect(list(events(generated, finish=finish)))], model="m")
    return sse_payloads(frames), body


@pytest.mark.parametrize("size", [1, 3, 7, 500])
def test_constrained_calls_stream_head_first_then_argument_fragments(size) -> None:
    chunks, body = constrained_stream(TWO_CALLS, size, tool_choice="auto")
    deltas = [c["choices"][0]["delta"] for c in chunks if c != "[DONE]" and c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    heads = [c for c in calls if "id" in c]
    assert [h["function"]["name"] for h in heads] == ["get_weather", "get_time"]
    assert all(h["type"] == "function" and h["function"]["arguments"] == "" for h in heads)
    joined = ["".join(c["function"]["arguments"] for c in calls if c["index"] == i) for i in (0, 1)]
    assert joined == ['{"city":"New York","n":[1,2]}', '{"zone":"UTC"}']  # compact; spaces inside strings kept
    if size < 10:
        assert sum(1 for c in calls if c["index"] == 0 and "id" not in c) > 1  # arguments in several fragments
    assert not any(d.get("content") for d in deltas)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c != "[DONE]" and c["choices"]][-1] == "tool_calls"
    # the non-streamed body says the same
    message = body["choices"][0]["message"]
    assert [c["function"]["arguments"] for c in message["tool_calls"]] == joined
    assert message["content"] is None and body["choices"][0]["finish_reason"] == "tool_calls"
    ChatCompletionChunk.model_validate(chunks[1])


def test_a_named_call_streams_from_the_prefill() -> None:
    named = {"type": "function", "function": {"name": "get_time"}}
    _, plan = chat_plan(chat(tools=[WEATHER, TIME], tool_choice=named), GRAMMARS)
    text = plan.assistant_prefix + '{"zone": "CET"}}]</tool_call>'
    chunks, body = constrained_stream(text, 2, tool_choice=named)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks
             if c != "[DONE]" and c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["function"]["name"] == "get_time" and calls[0]["id"].startswith("call_")
    assert "".join(c["function"]["arguments"] for c in calls[1:]) == '{"zone":"CET"}'
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"zone":"CET"}'


def test_a_call_cut_by_max_tokens_is_length_with_the_arguments_so_far() -> None:
    cut = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Ber'
    chunks, body = constrained_stream(cut, 4, finish="length", tool_choice="auto")
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Ber'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c != "[DONE]" and c["choices"]][-1] == "length"


def test_auto_text_streams_as_content_under_the_grammar() -> None:
    chunks, body = constrained_stream("Sunny [and] {warm}.", 3, tool_choice="auto")
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c != "[DONE]" and c["choices"])
    assert text == "Sunny [and] {warm}." == body["choices"][0]["message"]["content"]
    assert body["choices"][0]["finish_reason"] == "stop"


def test_objects_are_closed_where_that_cannot_exclude_an_instance(accepts) -> None:
    from services.inference.openai.structured import _closed

    open_person = {"type": "object", "properties": {"name": {"type": "string"}, "pets": {"type": "array", "items": {
        "type": "object", "properties": {"kind": {"type": "string"}}}}}, "required": ["name"]}
    closed = _closed(open_person)
    assert closed["additionalProperties"] is False
    assert closed["properties"]["pets"]["items"]["additionalProperties"] is False
    assert "additionalProperties" not in open_person  # the request's schema is not modified
    grammar = plan_for(response_format=json_schema(open_person, strict=None)).base.grammar
    assert accepts(grammar, '{"name": "Ann", "pets": [{"kind": "cat"}]}')
    assert not accepts(grammar, '{"name": "Ann", "x": 1}')  # undeclared keys are not generated
    # left open where closing could rule out every instance
    for schema in (
        {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a", "b"]},
        {"type": "object", "properties": {"a": {"type": "string"}}, "minProperties": 2},
        {"type": "object", "properties": {"a": {"type": "string"}}, "additionalProperties": {"type": "integer"}},
        {"allOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"properties": {"b": {}}}]},
    ):
        assert _closed(schema) == schema
