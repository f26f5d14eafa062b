"""Requests turned into generation plans: prompt text, tools in the prompt, n x SamplingParams, context limits."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from services.inference.domain import SamplingParams
from services.inference.openai import (
    EngineLimits,
    ProtocolError,
    build_completion_plan,
    chatml,
    parse_completion_request,
    render_conversation,
)
from services.inference.openai.tools import JsonOutput, PlainOutput, ToolCallOutput

from ._fakes import LIMITS, WEATHER, chat, chat_plan, completion


def test_plain_chat_prompt_is_the_template_with_a_generation_prompt() -> None:
    _, plan = chat_plan(chat(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]))
    assert plan.prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n"
        "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    )
    assert plan.assistant_prefix == "" and plan.tool_spec is None
    assert isinstance(plan.output_processor(), PlainOutput)


def test_the_callers_template_is_used() -> None:
    seen = []

    def template(turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
        seen.append((turns, add_generation_prompt))
        return "PROMPT:"

    from services.inference.openai import build_chat_plan, parse_chat_request

    plan = build_chat_plan(parse_chat_request(chat()), template, LIMITS)
    assert plan.prompt == "PROMPT:"
    assert seen == [([{"role": "user", "content": "hi"}], True)]


def test_sampling_params_map_every_openai_and_vllm_field() -> None:
    _, plan = chat_plan(chat(
        temperature=0.7, top_p=0.9, max_tokens=50, frequency_penalty=0.5, presence_penalty=-0.5, stop=["\n\n"],
        seed=42, logprobs=True, top_logprobs=3, top_k=40, repetition_penalty=1.2, ignore_eos=True,
        stop_token_ids=[7],
    ))
    [params] = plan.sampling_params(prompt_tokens=20)
    assert params == SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, max_tokens=50, frequency_penalty=0.5, presence_penalty=-0.5,
        repetition_penalty=1.2, stop=["\n\n"], stop_token_ids=[7], ignore_eos=True, seed=42, logprobs=True,
        top_logprobs=3,
    )


def test_openai_defaults() -> None:
    _, plan = chat_plan(chat())
    [params] = plan.sampling_params(prompt_tokens=100)
    assert (params.temperature, params.top_p, params.top_k, params.seed, params.logprobs) == (1.0, 1.0, 0, None, False)
    assert params.max_tokens == 2048  # rest of the context, capped by the model's max output


def test_top_p_zero_is_greedy() -> None:
    _, plan = chat_plan(chat(top_p=0, temperature=0.8))
    [params] = plan.sampling_params(10)
    assert (params.temperature, params.top_p) == (0.0, 1.0)


def test_n_fans_out_with_consecutive_seeds_and_independent_lists() -> None:
    _, plan = chat_plan(chat(n=3, seed=7, stop=["x"]))
    params = plan.sampling_params(10)
    assert [p.seed for p in params] == [7, 8, 9]
    params[0].stop.append("y")
    assert params[1].stop == ["x"]
    _, unseeded = chat_plan(chat(n=2))
    assert [p.seed for p in unseeded.sampling_params(10)] == [None, None]
    _, wrap = chat_plan(chat(n=2, seed=2**63 - 1))
    assert [p.seed for p in wrap.sampling_params(10)] == [2**63 - 1, -(2**63)]


def test_n_above_the_engine_cap_is_refused_with_openais_wording() -> None:
    with pytest.raises(ProtocolError) as info:
        chat_plan(chat(n=17))
    assert info.value.message == "Invalid 'n': integer above maximum value. Expected a value <= 16, but got 17 instead."
    assert (info.value.param, info.value.code) == ("n", "integer_above_max_value")


def test_context_length_exceeded() -> None:
    limits = EngineLimits(context_length=100)
    _, plan = chat_plan(chat(max_tokens=60), limits)
    assert plan.sampling_params(40)[0].max_tokens == 60
    with pytest.raises(ProtocolError) as info:
        plan.sampling_params(41)
    err = info.value
    assert err.message == (
        "This model's maximum context length is 100 tokens. However, you requested 101 tokens (41 in the messages, "
        "60 in the completion). Please reduce the length of the messages or completion."
    )
    assert (err.status, err.param, err.code) == (400, "messages", "context_length_exceeded")
    _, default = chat_plan(chat(), limits)
    assert default.sampling_params(90)[0].max_tokens == 10
    with pytest.raises(ProtocolError):
        default.sampling_params(100)


def test_max_tokens_above_the_models_output_limit() -> None:
    with pytest.raises(ProtocolError) as info:
        chat_plan(chat(max_tokens=5000))
    assert info.value.message == (
        "max_tokens is too large: 5000. This model supports at most 2048 completion tokens, whereas you provided 5000."
    )
    assert info.value.param == "max_tokens"


@pytest.mark.parametrize(
    ("fields", "param"),
    [({"logit_bias": {"5": 1}}, "logit_bias"), ({"min_tokens": 3}, "min_tokens")],
)
def test_features_the_engine_lacks_are_refused_clearly(fields: dict, param: str) -> None:
    with pytest.raises(ProtocolError) as info:
        chat_plan(chat(**fields))
    assert (info.value.param, info.value.code) == (param, "unsupported_parameter")
    assert "not supported by this model" in info.value.message


def test_features_the_engine_has_are_carried_in_the_plan() -> None:
    limits = replace(LIMITS, supports_logit_bias=True, supports_min_tokens=True)
    _, plan = chat_plan(chat(logit_bias={"5": -100}, min_tokens=3), limits)
    assert (plan.logit_bias, plan.min_tokens) == ({5: -100.0}, 3)
    with pytest.raises(ProtocolError) as info:
        chat_plan(chat(logit_bias={"49152": 1}), limits)
    assert info.value.message == "Invalid key in 'logit_bias': 49152. Maximum value is 49151."


def test_media_parts_are_refused_by_a_text_model() -> None:
    body = chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}])
    with pytest.raises(ProtocolError) as info:
        chat_plan(body)
    assert info.value.message == "Invalid content type. image_url is only supported by certain models."
    assert info.value.param == "messages[0].content[1].type"
    assert chat_plan(body, replace(LIMITS, supports_media=True))[1].prompt.endswith("What is this?<|im_end|>\n"
                                                                                     "<|im_start|>assistant\n")


# --- tools in the prompt -----------------------------------------------------------------------------------------


def test_tools_are_rendered_into_the_system_prompt_in_smollm2s_format() -> None:
    _, plan = chat_plan(chat(messages=[{"role": "system", "content": "You are Weatherbot."},
                                       {"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER]))
    system = plan.prompt.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nYou are Weatherbot.\n\nYou are an expert in composing functions.")
    tools_json = system.split("<tools>")[1].split("</tools>")[0]
    assert json.loads(tools_json) == [WEATHER]
    assert '<tool_call>[{"name": "func_name1", "arguments": {"argument1": "value1"' in system
    assert "answer the question directly" in system
    assert plan.assistant_prefix == ""
    assert plan.base.stop == ["</tool_call>"]
    assert isinstance(plan.output_processor(), ToolCallOutput)


def test_tool_choice_none_leaves_tools_out() -> None:
    _, plan = chat_plan(chat(tools=[WEATHER], tool_choice="none"))
    assert "<tools>" not in plan.prompt and plan.tool_spec is None and plan.base.stop == []


def test_required_and_named_choices_prefill_the_call() -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    _, required = chat_plan(chat(tools=[WEATHER, other], tool_choice="required"))
    assert required.prompt.endswith('<|im_start|>assistant\n<tool_call>[{"name": "')
    assert "You MUST call at least one of the functions." in required.prompt
    # With one function, "required" is that function named: the model only writes the arguments.
    _, only = chat_plan(chat(tools=[WEATHER], tool_choice="required"))
    assert only.prompt.endswith('<tool_call>[{"name": "get_weather", "arguments": ')
    _, named = chat_plan(chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}))
    assert named.prompt.endswith('<|im_start|>assistant\n<tool_call>[{"name": "get_weather", "arguments": ')
    assert named.assistant_prefix == '<tool_call>[{"name": "get_weather", "arguments": '
    assert 'You MUST call the function "get_weather".' in named.prompt


def test_parallel_tool_calls_false_asks_for_one_call() -> None:
    _, plan = chat_plan(chat(tools=[WEATHER], parallel_tool_calls=False))
    assert "make exactly one function call" in plan.prompt
    assert plan.tool_spec is not None and plan.tool_spec.max_calls == 1


def test_legacy_functions_are_rendered_like_tools() -> None:
    _, plan = chat_plan(chat(functions=[WEATHER["function"]], function_call={"name": "get_weather"}))
    assert plan.tool_spec is not None and plan.tool_spec.legacy and plan.tool_spec.max_calls == 1
    assert json.loads(plan.prompt.split("<tools>")[1].split("</tools>")[0]) == [WEATHER]
    assert plan.prompt.endswith('<tool_call>[{"name": "get_weather", "arguments": ')


def test_previous_tool_calls_and_results_are_rendered_back() -> None:
    _, plan = chat_plan(chat(tools=[WEATHER], messages=[
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "call_b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}},
        ]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
    ]))
    turns = plan.prompt.split("<|im_start|>")[2:]
    assert turns[1] == (
        'assistant\nChecking.\n<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "get_weather", "arguments": {"city": "Rome"}}]</tool_call><|im_end|>\n'
    )
    assert turns[2] == (
        'user\n<tool_response>{"name": "get_weather", "content": "sunny"}</tool_response>\n'
        '<tool_response>{"name": "get_weather", "content": "rain"}</tool_response><|im_end|>\n'
    )
    assert turns[3] == "assistant\n"


def test_legacy_function_messages_are_rendered_back() -> None:
    from services.inference.openai import parse_chat_request

    req = parse_chat_request(chat(messages=[
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": None, "function_call": {"name": "add", "arguments": '{"a":2,"b":2}'}},
        {"role": "function", "name": "add", "content": "4"},
    ]))
    assert render_conversation(req.messages) == [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": '<tool_call>[{"name": "add", "arguments": {"a": 2, "b": 2}}]</tool_call>'},
        {"role": "user", "content": '<tool_response>{"name": "add", "content": "4"}</tool_response>'},
    ]


def test_json_mode_adds_an_instruction_and_prefills_a_brace() -> None:
    _, plan = chat_plan(chat(response_format={"type": "json_object"}))
    assert "Respond only with a single valid JSON object" in plan.prompt
    assert plan.prompt.endswith("<|im_start|>assistant\n{") and plan.assistant_prefix == "{"
    assert isinstance(plan.output_processor(), JsonOutput)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    _, with_schema = chat_plan(chat(response_format={"type": "json_schema", "json_schema": {"name": "N",
                                                                                            "schema": schema}}))
    assert json.dumps(schema) in with_schema.prompt
    _, text = chat_plan(chat(response_format={"type": "text"}))
    assert text.assistant_prefix == "" and "JSON" not in text.prompt


def test_chatml_renders_turns() -> None:
    assert chatml([{"role": "user", "content": "x"}], False) == "<|im_start|>user\nx<|im_end|>\n"


# --- completions -------------------------------------------------------------------------------------------------


def test_completion_plan_defaults_to_16_tokens_and_counts_choices() -> None:
    plan = build_completion_plan(parse_completion_request(completion(prompt=["a", "b"], n=2, logprobs=2)), LIMITS)
    assert plan.choice_count == 4
    params = plan.sampling_params(5)
    assert len(params) == 2 and params[0].max_tokens == 16
    assert (params[0].logprobs, params[0].top_logprobs) == (True, 2)
    short = build_completion_plan(parse_completion_request(completion()), EngineLimits(context_length=20))
    assert short.sampling_params(10)[0].max_tokens == 10


def test_completion_context_error_uses_openais_completions_wording() -> None:
    plan = build_completion_plan(parse_completion_request(completion(max_tokens=50)), EngineLimits(context_length=60))
    with pytest.raises(ProtocolError) as info:
        plan.sampling_params(11)
    assert info.value.message == (
        "This model's maximum context length is 60 tokens, however you requested 61 tokens (11 in your prompt; 50 for "
        "the completion). Please reduce your prompt; or completion length."
    )
    assert info.value.code == "context_length_exceeded"


def test_completion_limits() -> None:
    with pytest.raises(ProtocolError) as info:
        build_completion_plan(parse_completion_request(completion(echo=True, logprobs=1)), LIMITS)
    assert (info.value.param, info.value.code) == ("echo", "unsupported_parameter")
    assert build_completion_plan(parse_completion_request(completion(echo=True, logprobs=1)),
                                 replace(LIMITS, supports_prompt_logprobs=True)).echo
    with pytest.raises(ProtocolError) as info:
        build_completion_plan(parse_completion_request(completion(prompt=[[1, 2], [3, 49152]])), LIMITS)
    assert info.value.message == "Invalid token in 'prompt[1][1]': 49152. Maximum value is 49151."
    with pytest.raises(ProtocolError) as info:
        build_completion_plan(parse_completion_request(completion(prompt=["x"] * 20, n=8)), LIMITS)
    assert info.value.param == "prompt"
