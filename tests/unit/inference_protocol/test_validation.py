"""Request validation: OpenAI's messages, params and codes for bad chat and completions bodies."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.inference.openai import (
    ProtocolError,
    ToolChoice,
    load_json_body,
    model_not_found,
    parse_chat_request,
    parse_completion_request,
)

from ._fakes import USER, WEATHER, chat, completion


def refused(fn, body) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        fn(body)
    assert info.value.status == 400
    assert info.value.type == "invalid_request_error"
    return info.value


def assert_error(err: ProtocolError, message: str, param: str | None, code: str | None) -> None:
    assert (err.message, err.param, err.code) == (message, param, code)
    assert err.body() == {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


# --- malformed bodies --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{", b"", b'{"model": "m",}', b"\xff\xfe", b'{"temperature": NaN}'])
def test_malformed_json_is_a_400_with_null_param(raw: bytes) -> None:
    err = refused(load_json_body, raw)
    assert err.message.startswith("We could not parse the JSON body of your request.")
    assert err.param is None and err.code is None


def test_a_body_that_is_not_an_object_is_refused() -> None:
    err = refused(parse_chat_request, b"[1, 2]")
    assert_error(err, "Invalid type for request body: expected an object, but got an array instead.", None,
                 "invalid_type")


def test_raw_bytes_and_decoded_bodies_parse_alike() -> None:
    body = chat(temperature=0.5, stop="\n")
    assert parse_chat_request(json.dumps(body).encode()) == parse_chat_request(body)


def test_model_not_found_is_openais_404() -> None:
    err = model_not_found("gpt-9")
    assert err.status == 404
    assert err.body() == {"error": {"message": "The model `gpt-9` does not exist or you do not have access to it.",
                                    "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


# --- model, messages ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "param", "code"),
    [
        ({"messages": USER}, "you must provide a model parameter", None, None),
        ({"model": "", "messages": USER}, "you must provide a model parameter", None, None),
        ({"model": 3, "messages": USER}, "Invalid type for 'model': expected a string, but got an integer instead.",
         "model", "invalid_type"),
        ({"model": "m"}, "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"),
        ({"model": "m", "messages": []},
         "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
         "messages", "empty_array"),
        ({"model": "m", "messages": "hi"},
         "Invalid type for 'messages': expected an array, but got a string instead.", "messages", "invalid_type"),
        ({"model": "m", "messages": ["hi"]},
         "Invalid type for 'messages[0]': expected an object, but got a string instead.", "messages[0]",
         "invalid_type"),
        ({"model": "m", "messages": [{"content": "hi"}]},
         "Missing required parameter: 'messages[0].role'.", "messages[0].role", "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
         "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and "
         "'developer'.", "messages[0].role", "invalid_value"),
        ({"model": "m", "messages": [{"role": "user"}]},
         "Missing required parameter: 'messages[0].content'.", "messages[0].content", "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]},
         "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer "
         "instead.", "messages[0].content", "invalid_type"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "video", "video": {}}]}]},
         "Invalid value: 'video'. Supported values are: 'text', 'image_url', 'input_audio', and 'file'.",
         "messages[0].content[0].type", "invalid_value"),
        ({"model": "m", "messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}]},
         "Invalid value: 'image_url'. Supported values are: 'text'.", "messages[0].content[0].type",
         "invalid_value"),
        ({"model": "m", "messages": [{"role": "user", "content": [{"type": "text"}]}]},
         "Missing required parameter: 'messages[0].content[0].text'.", "messages[0].content[0].text",
         "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "user", "content": "hi", "name": "a b"}]},
         "Invalid 'messages[0].name': string does not match pattern. Expected a string that matches the pattern "
         "'^[a-zA-Z0-9_-]+$'.", "messages[0].name", "invalid_value"),
        ({"model": "m", "messages": [{"role": "assistant"}]},
         "Missing required parameter: 'messages[0].content'.", "messages[0].content", "missing_required_parameter"),
        ({"model": "m", "messages": [{"role": "function", "content": "42"}]},
         "Missing required parameter: 'messages[0].name'.", "messages[0].name", "missing_required_parameter"),
    ],
)
def test_message_errors(body: dict, message: str, param: str | None, code: str | None) -> None:
    assert_error(refused(parse_chat_request, body), message, param, code)


def test_content_parts_are_joined_and_media_parts_remembered() -> None:
    req = parse_chat_request(chat(messages=[
        {"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [
            {"type": "text", "text": "Describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
            {"type": "text", "text": "please"},
        ]},
    ]))
    assert req.messages[0].content == "Be brief."
    assert req.messages[1].content == "Describe\nplease"
    assert req.messages[1].media_parts == [(1, "image_url")]


def test_assistant_tool_calls_and_tool_results_are_parsed() -> None:
    req = parse_chat_request(chat(messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ], tools=[WEATHER]))
    assistant, tool = req.messages[1], req.messages[2]
    assert assistant.content is None
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls] == [
        ("call_1", "get_weather", '{"city":"Paris"}')
    ]
    assert (tool.role, tool.tool_call_id, tool.content) == ("tool", "call_1", "sunny")


@pytest.mark.parametrize(
    ("messages", "message", "param", "code"),
    [
        ([{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "call_1", "content": "r"}],
         "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
         "'tool_calls'.", "messages.[1].role", None),
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}]},
          {"role": "user", "content": "and?"}],
         "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
         "'tool_call_id'. The following tool_call_ids did not have response messages: call_1",
         "messages.[1].role", None),
        ([{"role": "user", "content": "x"},
          {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                                                "function": {"name": "f", "arguments": "{}"}}]},
          {"role": "tool", "tool_call_id": "call_9", "content": "r"}],
         "Invalid parameter: 'tool_call_id' of 'call_9' not found in 'tool_calls' of previous message.",
         "messages.[2].tool_call_id", None),
        ([{"role": "tool", "content": "r"}],
         "Missing required parameter: 'messages[0].tool_call_id'.", "messages[0].tool_call_id",
         "missing_required_parameter"),
        ([{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]}],
         "Missing required parameter: 'messages[0].tool_calls[0].id'.", "messages[0].tool_calls[0].id",
         "missing_required_parameter"),
        ([{"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]}],
         "Missing required parameter: 'messages[0].tool_calls[0].function.arguments'.",
         "messages[0].tool_calls[0].function.arguments", "missing_required_parameter"),
    ],
)
def test_tool_message_sequence_errors(messages: list, message: str, param: str, code: str | None) -> None:
    assert_error(refused(parse_chat_request, chat(messages=messages)), message, param, code)


def test_parallel_tool_results_answer_one_assistant_turn() -> None:
    calls = [{"id": f"call_{i}", "type": "function", "function": {"name": "f", "arguments": "{}"}} for i in (1, 2)]
    req = parse_chat_request(chat(messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_2", "content": "b"},
        {"role": "tool", "tool_call_id": "call_1", "content": "a"},
        {"role": "user", "content": "thanks"},
    ]))
    assert [m.role for m in req.messages] == ["user", "assistant", "tool", "tool", "user"]


# --- sampling parameters -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message", "param", "code"),
    [
        ({"temperature": 3}, "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 3 "
         "instead.", "temperature", "decimal_above_max_value"),
        ({"temperature": 2.5}, "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got "
         "2.5 instead.", "temperature", "decimal_above_max_value"),
        ({"temperature": -0.5}, "Invalid 'temperature': decimal below minimum value. Expected a value >= 0, but got "
         "-0.5 instead.", "temperature", "decimal_below_min_value"),
        ({"temperature": "hot"}, "Invalid type for 'temperature': expected a decimal, but got a string instead.",
         "temperature", "invalid_type"),
        ({"temperature": True}, "Invalid type for 'temperature': expected a decimal, but got a boolean instead.",
         "temperature", "invalid_type"),
        ({"top_p": 1.5}, "Invalid 'top_p': decimal above maximum value. Expected a value <= 1, but got 1.5 instead.",
         "top_p", "decimal_above_max_value"),
        ({"n": 0}, "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.", "n",
         "integer_below_min_value"),
        ({"n": 129}, "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead.", "n",
         "integer_above_max_value"),
        ({"n": 1.5}, "Invalid type for 'n': expected an integer, but got a decimal instead.", "n", "invalid_type"),
        ({"max_tokens": 0}, "Invalid 'max_tokens': integer below minimum value. Expected a value >= 1, but got 0 "
         "instead.", "max_tokens", "integer_below_min_value"),
        ({"max_completion_tokens": -3}, "Invalid 'max_completion_tokens': integer below minimum value. Expected a "
         "value >= 1, but got -3 instead.", "max_completion_tokens", "integer_below_min_value"),
        ({"max_tokens": 5, "max_completion_tokens": 5}, "Setting 'max_tokens' and 'max_completion_tokens' at the "
         "same time is not supported.", "max_tokens", "invalid_value"),
        ({"presence_penalty": 2.1}, "Invalid 'presence_penalty': decimal above maximum value. Expected a value <= 2, "
         "but got 2.1 instead.", "presence_penalty", "decimal_above_max_value"),
        ({"frequency_penalty": -3}, "Invalid 'frequency_penalty': decimal below minimum value. Expected a value >= "
         "-2, but got -3 instead.", "frequency_penalty", "decimal_below_min_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "Invalid 'stop': array too long. Expected an array with maximum length "
         "4, but got an array with length 5 instead.", "stop", "array_above_max_length"),
        ({"stop": ["a", 1]}, "Invalid type for 'stop[1]': expected a string, but got an integer instead.", "stop[1]",
         "invalid_type"),
        ({"stop": 7}, "Invalid type for 'stop': expected one of a string or array of strings, but got an integer "
         "instead.", "stop", "invalid_type"),
        ({"seed": 2**63}, f"Invalid 'seed': integer above maximum value. Expected a value <= {2**63 - 1}, but got "
         f"{2**63} instead.", "seed", "integer_above_max_value"),
        ({"logprobs": 1}, "Invalid type for 'logprobs': expected a boolean, but got an integer instead.", "logprobs",
         "invalid_type"),
        ({"logprobs": True, "top_logprobs": 21}, "Invalid 'top_logprobs': integer above maximum value. Expected a "
         "value <= 20, but got 21 instead.", "top_logprobs", "integer_above_max_value"),
        ({"top_logprobs": 2}, "Invalid value for 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' "
         "is used.", "top_logprobs", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "The 'stream_options' parameter is only allowed when 'stream' "
         "is enabled.", "stream_options", "invalid_value"),
        ({"stream": "yes"}, "Invalid type for 'stream': expected a boolean, but got a string instead.", "stream",
         "invalid_type"),
        ({"user": 5}, "Invalid type for 'user': expected a string, but got an integer instead.", "user",
         "invalid_type"),
        ({"logit_bias": {"abc": 1}}, "Invalid key in 'logit_bias': abc. You should only be submitting non-negative "
         "integers.", "logit_bias", "invalid_value"),
        ({"logit_bias": {"50256": 101}}, "Invalid value for 'logit_bias': bias must be between -100 and 100, but got "
         "101 for token 50256.", "logit_bias", "invalid_value"),
        ({"logit_bias": {"50256": "x"}}, "Invalid type for 'logit_bias.50256': expected a decimal, but got a string "
         "instead.", "logit_bias.50256", "invalid_type"),
        ({"top_k": -2}, "Invalid 'top_k': integer below minimum value. Expected a value >= -1, but got -2 instead.",
         "top_k", "integer_below_min_value"),
        ({"repetition_penalty": 0}, "Invalid 'repetition_penalty': decimal below minimum value. Expected a value > "
         "0, but got 0 instead.", "repetition_penalty", "decimal_below_min_value"),
        ({"min_tokens": 9, "max_tokens": 4}, "Invalid 'min_tokens': integer above maximum value. Expected a value <= "
         "4 (max_tokens), but got 9 instead.", "min_tokens", "integer_above_max_value"),
        ({"stop_token_ids": [1, -1]}, "Invalid 'stop_token_ids[1]': integer below minimum value. Expected a value "
         ">= 0, but got -1 instead.", "stop_token_ids[1]", "integer_below_min_value"),
    ],
)
def test_sampling_errors(fields: dict, message: str, param: str, code: str) -> None:
    assert_error(refused(parse_chat_request, chat(**fields)), message, param, code)


def test_defaults_and_accepted_values() -> None:
    req = parse_chat_request(chat(
        temperature=0, top_p=0.9, n=3, stop="END", seed=-5, presence_penalty=-2, frequency_penalty=2,
        logit_bias={"42": -100, "7": 5.5}, stream=True, stream_options={"include_usage": True}, user="u1",
        logprobs=True, top_logprobs=20, max_completion_tokens=64, top_k=-1, repetition_penalty=1.1, ignore_eos=True,
        stop_token_ids=[2], unknown_field={"anything": 1}, metadata={"k": "v"}, store=False,
    ))
    assert (req.temperature, req.top_p, req.n, req.stop, req.seed) == (0.0, 0.9, 3, ["END"], -5)
    assert req.logit_bias == {42: -100.0, 7: 5.5}
    assert (req.stream, req.include_usage, req.user) == (True, True, "u1")
    assert (req.logprobs, req.top_logprobs, req.max_tokens) == (True, 20, 64)
    assert (req.top_k, req.repetition_penalty, req.ignore_eos, req.stop_token_ids) == (None, 1.1, True, [2])


def test_nulls_mean_defaults_and_integral_floats_are_integers() -> None:
    req = parse_chat_request(chat(temperature=None, n=2.0, stop=None, max_tokens=None, tools=None, seed=None))
    assert (req.temperature, req.n, req.stop, req.max_tokens, req.tools) == (None, 2, [], None, [])


def test_empty_stop_strings_are_dropped() -> None:
    assert parse_chat_request(chat(stop=["", "\n"])).stop == ["\n"]
    assert parse_chat_request(chat(stop="")).stop == []


# --- tools and functions -----------------------------------------------------------------------------------------


def tool(name: str = "get_weather", **function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, **function}}


@pytest.mark.parametrize(
    ("fields", "message", "param", "code"),
    [
        ({"tools": []}, "Invalid 'tools': empty array. Expected an array with minimum length 1, but got an empty "
         "array instead.", "tools", "empty_array"),
        ({"tools": [tool(f"f{i}") for i in range(129)]}, "Invalid 'tools': array too long. Expected an array with "
         "maximum length 128, but got an array with length 129 instead.", "tools", "array_above_max_length"),
        ({"tools": ["get_weather"]}, "Invalid type for 'tools[0]': expected an object, but got a string instead.",
         "tools[0]", "invalid_type"),
        ({"tools": [{"type": "function"}]}, "Missing required parameter: 'tools[0].function'.", "tools[0].function",
         "missing_required_parameter"),
        ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "Invalid value: 'retrieval'. Supported "
         "values are: 'function'.", "tools[0].type", "invalid_value"),
        ({"tools": [{"function": {"name": "f"}}]}, "Missing required parameter: 'tools[0].type'.", "tools[0].type",
         "missing_required_parameter"),
        ({"tools": [tool(name=None, description="x")]}, "Missing required parameter: 'tools[0].function.name'.",
         "tools[0].function.name", "missing_required_parameter"),
        ({"tools": [WEATHER, tool("get weather")]}, "Invalid 'tools[1].function.name': string does not match "
         "pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.", "tools[1].function.name",
         "invalid_value"),
        ({"tools": [tool("x" * 65)]}, "Invalid 'tools[0].function.name': string too long. Expected a string with "
         "maximum length 64, but got a string with length 65 instead.", "tools[0].function.name",
         "string_above_max_length"),
        ({"tools": [tool(parameters="city: str")]}, "Invalid type for 'tools[0].function.parameters': expected an "
         "object, but got a string instead.", "tools[0].function.parameters", "invalid_type"),
        ({"tools": [tool(parameters={"type": "string"})]}, "Invalid schema for function 'get_weather': In "
         "context=(), schema must be a JSON Schema of 'type: \"object\"', got 'type: \"string\"'.",
         "tools[0].function.parameters", "invalid_function_parameters"),
        ({"tools": [tool(parameters={"properties": {"a": {"type": "string"}}})]}, "Invalid schema for function "
         "'get_weather': In context=(), schema must be a JSON Schema of 'type: \"object\"', got 'type: \"None\"'.",
         "tools[0].function.parameters", "invalid_function_parameters"),
        ({"tools": [tool(parameters={"type": "object", "properties": []})]}, "Invalid schema for function "
         "'get_weather': In context=(), 'properties' must be an object mapping property names to schemas.",
         "tools[0].function.parameters", "invalid_function_parameters"),
        ({"tools": [tool(parameters={"type": "object", "required": "city"})]}, "Invalid schema for function "
         "'get_weather': In context=(), 'required' must be an array of strings.", "tools[0].function.parameters",
         "invalid_function_parameters"),
        ({"tool_choice": "auto"}, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
         "specified.", "tool_choice", None),
        ({"tools": [WEATHER], "tool_choice": "always"}, "Invalid value: 'always'. Supported values are: 'none', "
         "'auto', and 'required'.", "tool_choice", "invalid_value"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function"}}, "Missing required parameter: "
         "'tool_choice.function'.", "tool_choice.function", "missing_required_parameter"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "Invalid value for "
         "'tool_choice': function 'nope' was not found in 'tools'.", "tool_choice", "invalid_value"),
        ({"tools": [WEATHER], "tool_choice": 3}, "Invalid type for 'tool_choice': expected one of a string or "
         "object, but got an integer instead.", "tool_choice", "invalid_type"),
        ({"parallel_tool_calls": False}, "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only "
         "allowed when 'tools' are specified.", "parallel_tool_calls", None),
        ({"tools": [WEATHER], "functions": [WEATHER["function"]]}, "Invalid request: 'functions' and 'tools' cannot "
         "both be provided.", "functions", None),
        ({"functions": [{"description": "no name"}]}, "Missing required parameter: 'functions[0].name'.",
         "functions[0].name", "missing_required_parameter"),
        ({"functions": [WEATHER["function"]], "function_call": "required"}, "Invalid value: 'required'. Supported "
         "values are: 'none' and 'auto'.", "function_call", "invalid_value"),
        ({"functions": [WEATHER["function"]], "function_call": {"name": "other"}}, "Invalid value for "
         "'function_call': function 'other' was not found in 'functions'.", "function_call", "invalid_value"),
        ({"function_call": "auto"}, "Invalid value for 'function_call': 'function_call' is only allowed when "
         "'functions' are specified.", "function_call", None),
    ],
)
def test_tool_errors(fields: dict, message: str, param: str, code: str | None) -> None:
    assert_error(refused(parse_chat_request, chat(**fields)), message, param, code)


def test_tools_and_choices_parse() -> None:
    req = parse_chat_request(chat(tools=[WEATHER, tool("noop", parameters={})]))
    assert [t.name for t in req.tools] == ["get_weather", "noop"]
    assert req.tools[0].parameters == WEATHER["function"]["parameters"]
    assert req.tool_choice == ToolChoice("auto") and not req.legacy_functions
    named = parse_chat_request(chat(tools=[WEATHER], tool_choice={"type": "function",
                                                                   "function": {"name": "get_weather"}}))
    assert named.tool_choice == ToolChoice("named", "get_weather")
    assert parse_chat_request(chat(tools=[WEATHER], tool_choice="required")).tool_choice == ToolChoice("required")
    assert parse_chat_request(chat(tool_choice="none")).tool_choice == ToolChoice("none")
    legacy = parse_chat_request(chat(functions=[WEATHER["function"]], function_call={"name": "get_weather"}))
    assert legacy.legacy_functions and legacy.tool_choice == ToolChoice("named", "get_weather")
    assert parse_chat_request(chat(tools=[WEATHER], parallel_tool_calls=False)).parallel_tool_calls is False


# --- response_format ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "message", "param", "code"),
    [
        ({"type": "xml"}, "Invalid value: 'xml'. Supported values are: 'text', 'json_object', and 'json_schema'.",
         "response_format.type", "invalid_value"),
        ({}, "Missing required parameter: 'response_format.type'.", "response_format.type",
         "missing_required_parameter"),
        ({"type": "json_schema"}, "Missing required parameter: 'response_format.json_schema'.",
         "response_format.json_schema", "missing_required_parameter"),
        ({"type": "json_schema", "json_schema": {"schema": {}}}, "Missing required parameter: "
         "'response_format.json_schema.name'.", "response_format.json_schema.name", "missing_required_parameter"),
        ({"type": "json_schema", "json_schema": {"name": "a.b"}}, "Invalid 'response_format.json_schema.name': "
         "string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
         "response_format.json_schema.name", "invalid_value"),
        ("json", "Invalid type for 'response_format': expected an object, but got a string instead.",
         "response_format", "invalid_type"),
    ],
)
def test_response_format_errors(fmt: Any, message: str, param: str, code: str) -> None:
    assert_error(refused(parse_chat_request, chat(response_format=fmt)), message, param, code)


def test_response_format_json_schema_parses() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}}
    req = parse_chat_request(chat(response_format={"type": "json_schema", "json_schema": {
        "name": "Answer", "schema": schema, "strict": True}}))
    rf = req.response_format
    assert (rf.type, rf.name, rf.schema, rf.strict) == ("json_schema", "Answer", schema, True)


# --- completions -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message", "param", "code"),
    [
        ({"model": "m"}, "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"),
        (completion(prompt=[]), "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an "
         "empty array instead.", "prompt", "empty_array"),
        (completion(prompt=5), "Invalid type for 'prompt': expected one of a string, array of strings, array of "
         "integers, or array of arrays of integers, but got an integer instead.", "prompt", "invalid_type"),
        (completion(prompt=["a", 5.5]), "Invalid type for 'prompt[1]': expected one of a string or array of "
         "integers, but got a decimal instead.", "prompt[1]", "invalid_type"),
        (completion(prompt=[1, -2]), "Invalid 'prompt[1]': integer below minimum value. Expected a value >= 0, but "
         "got -2 instead.", "prompt[1]", "integer_below_min_value"),
        (completion(prompt=[[1], ["x"]]), "Invalid type for 'prompt[1][0]': expected an integer, but got a string "
         "instead.", "prompt[1][0]", "invalid_type"),
        (completion(prompt=[[1], []]), "Invalid 'prompt[1]': empty array. Expected an array with minimum length 1, "
         "but got an empty array instead.", "prompt[1]", "empty_array"),
        (completion(logprobs=6), "Invalid 'logprobs': integer above maximum value. Expected a value <= 5, but got 6 "
         "instead.", "logprobs", "integer_above_max_value"),
        (completion(logprobs=True), "Invalid type for 'logprobs': expected an integer, but got a boolean instead.",
         "logprobs", "invalid_type"),
        (completion(max_tokens=-1), "Invalid 'max_tokens': integer below minimum value. Expected a value >= 0, but "
         "got -1 instead.", "max_tokens", "integer_below_min_value"),
        (completion(echo="yes"), "Invalid type for 'echo': expected a boolean, but got a string instead.", "echo",
         "invalid_type"),
        (completion(suffix="end"), "Invalid value for 'suffix': suffix is not supported by this model.", "suffix",
         "unsupported_parameter"),
        (completion(n=3, best_of=2), "best_of must be greater than or equal to n.", "best_of", "invalid_value"),
        (completion(best_of=3), "Invalid value for 'best_of': values greater than 'n' are not supported.", "best_of",
         "unsupported_parameter"),
    ],
)
def test_completion_errors(body: dict, message: str, param: str, code: str) -> None:
    assert_error(refused(parse_completion_request, body), message, param, code)


@pytest.mark.parametrize(
    ("prompt", "texts", "ids"),
    [
        ("Hello", ["Hello"], [None]),
        ("", [""], [None]),
        (["a", "b"], ["a", "b"], [None, None]),
        ([1, 2, 3], [None], [[1, 2, 3]]),
        ([[1, 2], [3]], [None, None], [[1, 2], [3]]),
        (["a", [4, 5]], ["a", None], [None, [4, 5]]),
    ],
)
def test_prompt_shapes(prompt: Any, texts: list, ids: list) -> None:
    req = parse_completion_request(completion(prompt=prompt))
    assert [p.text for p in req.prompts] == texts
    assert [p.token_ids for p in req.prompts] == ids


def test_completion_fields() -> None:
    req = parse_completion_request(completion(max_tokens=0, echo=True, logprobs=0, n=2, best_of=2, stop=["\n"]))
    assert (req.max_tokens, req.echo, req.logprobs, req.n, req.best_of, req.stop) == (0, True, 0, 2, 2, ["\n"])
