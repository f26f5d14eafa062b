"""Response rendering: OpenAI's JSON bodies and SSE chunks, checked frame by frame and with the SDK's own models."""

from __future__ import annotations

import json
import math

import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.inference.domain import GenerationEvent, TokenLogprob, TopLogprob, Usage
from services.inference.openai import ProtocolError, build_completion_plan, parse_completion_request
from services.inference.openai.render import (
    DONE,
    ChatCompletionStream,
    ChoiceResult,
    CompletionStream,
    completion_logprobs,
    finish_reason,
    json_bytes,
    new_id,
    render_chat_completion,
    render_completion,
)

from ._fakes import LIMITS, WEATHER, chat, chat_plan, completion, events, sse_payloads, token_logprob

TOOLS_AUTO = {"tools": [WEATHER]}
CALL = '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>'


def stream_chat(body: dict, *texts: str, finish: str = "stop", size: int = 3) -> tuple[list, list[bytes]]:
    _, plan = chat_plan(body)
    stream = ChatCompletionStream(plan, model="smollm2", created=1700000000, completion_id="chatcmpl-test",
                                  system_fingerprint="fp_x")
    frames = stream.start()
    per_choice = [list(events(t, finish=finish, size=size, logprobs=plan.base.logprobs)) for t in texts]
    for step in range(max(len(e) for e in per_choice)):
        for index, evs in enumerate(per_choice):
            if step < len(evs):
                frames += stream.feed(index, evs[step])
    assert stream.finished
    frames += stream.close()
    return sse_payloads(frames), frames


def complete_chat(body: dict, *texts: str, finish: str = "stop") -> dict:
    _, plan = chat_plan(body)
    logprobs = plan.base.logprobs
    results = [ChoiceResult.collect(list(events(t, finish=finish, logprobs=logprobs))) for t in texts]
    return render_chat_completion(plan, results, model="smollm2", created=1700000000, completion_id="chatcmpl-test")


def test_ids_and_framing() -> None:
    assert new_id("chatcmpl").startswith("chatcmpl-") and len(new_id("chatcmpl")) == 38
    assert new_id("cmpl").startswith("cmpl-")
    _, frames = stream_chat(chat(stream=True), "Hi!")
    assert frames[-1] == DONE == b"data: [DONE]\n\n"
    for frame in frames[:-1]:
        assert frame.startswith(b'data: {"id":"chatcmpl-test","object":"chat.completion.chunk","created":1700000000,')
        assert frame.endswith(b"}\n\n") and b"\n" not in frame[:-2]
    assert json_bytes({"t": "é"}) == '{"t":"é"}'.encode()


def test_chat_completion_body() -> None:
    body = complete_chat(chat(), "Hello there!")
    assert body == {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "smollm2",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there!", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        "system_fingerprint": None,
    }
    ChatCompletion.model_validate(body)
    ChatCompletion.model_validate_json(json_bytes(body))


def test_chat_stream_chunks_in_order() -> None:
    payloads, _ = stream_chat(chat(stream=True), "Hello there!", size=6)
    assert [p if p == "[DONE]" else p["choices"] for p in payloads] == [
        [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None}, "logprobs": None,
          "finish_reason": None}],
        [{"index": 0, "delta": {"content": "Hello "}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {"content": "there!"}, "logprobs": None, "finish_reason": None}],
        [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
        "[DONE]",
    ]
    for p in payloads[:-1]:
        assert "usage" not in p and p["system_fingerprint"] == "fp_x"
        ChatCompletionChunk.model_validate(p)


def test_include_usage_adds_a_usage_only_chunk_and_null_usage_elsewhere() -> None:
    payloads, _ = stream_chat(chat(stream=True, stream_options={"include_usage": True}, n=2), "ab", "abcdef")
    *chunks, usage_chunk, done = payloads
    assert done == "[DONE]"
    assert all(c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"] == {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}
    ChatCompletionChunk.model_validate(usage_chunk)


def test_n_choices_interleave_by_index() -> None:
    payloads, _ = stream_chat(chat(stream=True, n=3, seed=1), "aaa111", "bbb", "cccccc222")
    choices = [p["choices"][0] for p in payloads[:-1]]
    assert [c["index"] for c in choices[:3]] == [0, 1, 2]  # role chunks
    assert [c["index"] for c in choices[3:]] == [0, 1, 1, 2, 0, 0, 2, 2, 2]  # as the events arrived
    texts = {i: "".join(c["delta"].get("content", "") for c in choices if c["index"] == i) for i in range(3)}
    assert texts == {0: "aaa111", 1: "bbb", 2: "cccccc222"}
    finals = [c for c in choices if c["finish_reason"]]
    assert sorted(c["index"] for c in finals) == [0, 1, 2]
    assert all(c["delta"] == {} for c in finals)


def test_non_streamed_n_choices_and_usage_counts_the_prompt_once() -> None:
    body = complete_chat(chat(n=2), "one", "two two")
    assert [c["message"]["content"] for c in body["choices"]] == ["one", "two two"]
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


@pytest.mark.parametrize(("engine", "openai"), [("stop", "stop"), ("length", "length"), ("cancelled", "stop"),
                                                 (None, "stop")])
def test_finish_reasons(engine: str | None, openai: str) -> None:
    assert finish_reason(engine) == openai


def test_length_finish() -> None:
    body = complete_chat(chat(), "truncat", finish="length")
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_logprobs_body_and_chunks() -> None:
    body = complete_chat(chat(logprobs=True, top_logprobs=2), "abcdef")
    lp = body["choices"][0]["logprobs"]
    assert lp["refusal"] is None
    assert lp["content"][0] == {
        "token": "abc", "logprob": -0.25, "bytes": [97, 98, 99],
        "top_logprobs": [{"token": "abc", "logprob": -0.25, "bytes": [97, 98, 99]},
                         {"token": "alt0", "logprob": -1.5, "bytes": list(b"alt0")}],
    }
    assert len(lp["content"]) == 2
    ChatCompletion.model_validate(body)
    payloads, _ = stream_chat(chat(stream=True, logprobs=True, top_logprobs=1), "abcdef")
    content_chunks = [p["choices"][0] for p in payloads[1:-2]]
    assert [c["logprobs"]["content"][0]["token"] for c in content_chunks] == ["abc", "def"]
    assert all(len(c["logprobs"]["content"][0]["top_logprobs"]) == 1 for c in content_chunks)
    for p in payloads[:-1]:
        ChatCompletionChunk.model_validate(p)


def test_infinite_logprobs_become_openais_floor() -> None:
    tok = TokenLogprob(token="x", logprob=-math.inf, bytes=[120], top_logprobs=[TopLogprob("x", -math.inf, [120])])
    _, plan = chat_plan(chat(logprobs=True, top_logprobs=1))
    body = render_chat_completion(plan, [ChoiceResult(text="x", logprobs=[tok], finish_reason="stop",
                                                      usage=Usage(1, 1))], model="m")
    assert body["choices"][0]["logprobs"]["content"][0]["logprob"] == -9999.0
    json_bytes(body)  # no NaN/Infinity reaches JSON


# --- tools -------------------------------------------------------------------------------------------------------


def test_tool_call_body() -> None:
    body = complete_chat(chat(**TOOLS_AUTO), CALL)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None and message["refusal"] is None
    [call] = message["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    ChatCompletion.model_validate(body)


def test_tool_call_stream_deltas() -> None:
    payloads, _ = stream_chat(chat(stream=True, **TOOLS_AUTO), "Let me see. " + CALL)
    deltas = [p["choices"][0]["delta"] for p in payloads[:-1]]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Let me see. "
    tool_deltas = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_deltas[0]["index"] == 0 and tool_deltas[0]["id"].startswith("call_")
    assert tool_deltas[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert tool_deltas[1] == {"index": 0, "function": {"arguments": '{"city":"Paris"}'}}
    assert payloads[-2]["choices"][0]["finish_reason"] == "tool_calls"
    for p in payloads[:-1]:
        ChatCompletionChunk.model_validate(p)


def test_unparseable_tool_output_streams_as_content() -> None:
    text = '<tool_call>[{"name": "unknown_fn", "arguments": {}}]'
    payloads, _ = stream_chat(chat(stream=True, **TOOLS_AUTO), text)
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]) == text
    assert payloads[-2]["choices"][0]["finish_reason"] == "stop"
    assert complete_chat(chat(**TOOLS_AUTO), text)["choices"][0]["message"] == {
        "role": "assistant", "content": text, "refusal": None}


def test_required_choice_prefill_is_part_of_the_parsed_call() -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
    body = complete_chat(chat(tools=[WEATHER, other], tool_choice="required"),
                         'get_weather", "arguments": {"city": "Lyon"}}]')
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city":"Lyon"}'


def test_legacy_function_call_body_and_stream() -> None:
    fields = {"functions": [WEATHER["function"]], "function_call": "auto"}
    body = complete_chat(chat(**fields), CALL)
    choice = body["choices"][0]
    assert choice["finish_reason"] == "function_call"
    assert choice["message"]["function_call"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert "tool_calls" not in choice["message"]
    ChatCompletion.model_validate(body)
    payloads, _ = stream_chat(chat(stream=True, **fields), CALL)
    fc = [p["choices"][0]["delta"]["function_call"] for p in payloads[:-1] if "function_call" in
          p["choices"][0]["delta"]]
    assert fc == [{"name": "get_weather", "arguments": ""}, {"arguments": '{"city":"Paris"}'}]
    assert payloads[-2]["choices"][0]["finish_reason"] == "function_call"


# --- JSON mode ---------------------------------------------------------------------------------------------------


def test_json_mode_content_is_the_object() -> None:
    body = complete_chat(chat(response_format={"type": "json_object"}), '"city": "Paris"}\nThat is all.')
    assert json.loads(body["choices"][0]["message"]["content"]) == {"city": "Paris"}
    payloads, _ = stream_chat(chat(stream=True, response_format={"type": "json_object"}), '"n": 1} trailing')
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads[:-1]) == '{"n": 1}'


# --- errors ------------------------------------------------------------------------------------------------------


def test_an_engine_error_mid_stream_is_sent_in_band_and_ends_the_stream() -> None:
    _, plan = chat_plan(chat(stream=True, n=2))
    stream = ChatCompletionStream(plan, model="m")
    frames = stream.start() + stream.feed(0, GenerationEvent(text="par"))
    frames += stream.feed(1, GenerationEvent(finish_reason="error", error="CUDA exploded at 0x7f"))
    frames += stream.feed(0, GenerationEvent(text="tial"))
    frames += stream.close()
    payloads = sse_payloads(frames)
    assert payloads[-1] == "[DONE]"
    assert payloads[-2] == {"error": {"message": "The server had an error while processing your request. Sorry about "
                                                 "that!", "type": "server_error", "param": None, "code": None}}
    assert b"CUDA" not in b"".join(frames)
    assert len(payloads) == 5  # 2 role chunks, 1 content chunk, error, [DONE]


def test_a_failed_choice_makes_the_non_streamed_request_a_500() -> None:
    _, plan = chat_plan(chat())
    with pytest.raises(ProtocolError) as info:
        render_chat_completion(plan, [ChoiceResult(finish_reason="error", error="boom")], model="m")
    assert (info.value.status, info.value.type) == (500, "server_error")
    assert "boom" not in info.value.message


# --- completions -------------------------------------------------------------------------------------------------


def completion_plan(**fields):
    return build_completion_plan(parse_completion_request(completion(**fields)), LIMITS)


def test_completion_body() -> None:
    plan = completion_plan(prompt=["A", "B"], n=2)
    results = [ChoiceResult.collect(list(events(t, prompt_tokens=5))) for t in ("a1", "a2", "b1", "b2 b2")]
    body = render_completion(plan, results, model="smollm2", created=1, completion_id="cmpl-test")
    assert body["object"] == "text_completion" and body["id"] == "cmpl-test"
    assert [(c["index"], c["text"], c["logprobs"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "a1", None, "stop"), (1, "a2", None, "stop"), (2, "b1", None, "stop"), (3, "b2 b2", None, "stop")]
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    Completion.model_validate(body)


def test_completion_echo_prepends_the_prompt() -> None:
    plan = completion_plan(echo=True)
    body = render_completion(plan, [ChoiceResult(text=" there", finish_reason="length", usage=Usage(3, 2))],
                             model="m", prompt_texts=["Once upon a time"])
    assert body["choices"][0]["text"] == "Once upon a time there"
    assert body["choices"][0]["finish_reason"] == "length"


def test_completion_logprobs_legacy_shape() -> None:
    plan = completion_plan(logprobs=2)
    results = [ChoiceResult.collect(list(events("abcdef", logprobs=True)))]
    lp = render_completion(plan, results, model="m")["choices"][0]["logprobs"]
    assert lp == {
        "tokens": ["abc", "def"],
        "token_logprobs": [-0.25, -0.25],
        "top_logprobs": [{"abc": -0.25, "alt0": -1.5}, {"def": -0.25, "alt0": -1.5}],
        "text_offset": [0, 3],
    }
    Completion.model_validate(render_completion(plan, results, model="m"))


def test_completion_logprobs_zero_still_names_the_chosen_token() -> None:
    lp = completion_logprobs([token_logprob("x")], 0)
    assert lp["top_logprobs"] == [{"x": -0.25}]


def test_completion_prompt_logprobs_with_echo() -> None:
    lp = completion_logprobs([None, token_logprob("b")], 1)
    assert lp["tokens"] == ["", "b"] and lp["token_logprobs"] == [None, -0.25] and lp["top_logprobs"][0] is None


def test_completion_stream() -> None:
    plan = completion_plan(n=2, stream=True, stream_options={"include_usage": True}, logprobs=1, echo=False)
    stream = CompletionStream(plan, model="m", created=5, completion_id="cmpl-s")
    assert stream.start() == []
    frames: list[bytes] = []
    per = [list(events("abcdef", logprobs=True)), list(events("xy", logprobs=True))]
    for step in range(2):
        for index in range(2):
            if step < len(per[index]):
                frames += stream.feed(index, per[index][step])
    frames += stream.close()
    payloads = sse_payloads(frames)
    assert payloads[-1] == "[DONE]"
    usage_chunk = payloads[-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 3
    chunks = payloads[:-2]
    for p in chunks:
        assert p["object"] == "text_completion" and p["usage"] is None and len(p["choices"]) == 1
        if p["choices"][0]["finish_reason"] is not None:  # the SDK types it non-null; OpenAI streams null first
            Completion.model_validate(p)
    first = [p["choices"][0] for p in chunks if p["choices"][0]["index"] == 0]
    assert [c["text"] for c in first] == ["abc", "def", ""]
    assert [c["logprobs"]["text_offset"] for c in first[:2]] == [[0], [3]]
    assert first[-1]["finish_reason"] == "stop" and first[-1]["logprobs"] is None


def test_completion_stream_echo_sends_the_prompt_first() -> None:
    plan = completion_plan(stream=True, echo=True, n=2)
    stream = CompletionStream(plan, model="m", prompt_texts=["Hi"])
    first = sse_payloads(stream.start())
    assert [(p["choices"][0]["index"], p["choices"][0]["text"]) for p in first] == [(0, "Hi"), (1, "Hi")]
