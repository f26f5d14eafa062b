"""Model output read back: <tool_call> blocks into OpenAI tool calls, fallbacks to content, JSON mode."""

from __future__ import annotations

import itertools
import json

import pytest

from services.inference.openai.tools import (
    FunctionDef,
    JsonObjectTracker,
    JsonOutput,
    PlainOutput,
    ProcessedOutput,
    ToolCall,
    ToolCallOutput,
    ToolSpec,
    assistant_prefix,
    extract_json_object,
    format_tool_calls,
    new_call_id,
    parse_tool_output,
)

WEATHER = FunctionDef("get_weather", "Weather", {"type": "object", "properties": {"city": {"type": "string"}}})
TIME = FunctionDef("get_time", None, None)
AUTO = ToolSpec((WEATHER, TIME))


def numbered() -> object:
    counter = itertools.count(1)
    return lambda: f"call_{next(counter)}"


def calls(text: str, spec: ToolSpec = AUTO) -> list[tuple[str, str]]:
    return [(c.name, c.arguments) for c in parse_tool_output(text, spec, numbered()).tool_calls]


def test_call_ids_look_like_openais() -> None:
    cid = new_call_id()
    assert cid.startswith("call_") and len(cid) == 29 and cid[5:].isalnum()
    assert new_call_id() != cid


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>',
         [("get_weather", '{"city":"Paris"}')]),
        ('<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
         '{"name": "get_time", "arguments": {}}\n]</tool_call>',
         [("get_weather", '{"city":"Paris"}'), ("get_time", "{}")]),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Zürich"}}</tool_call>',
         [("get_weather", '{"city":"Zürich"}')]),
        ('<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',  # stopped at </tool_call>
         [("get_weather", '{"city":"Paris"}')]),
        ('<tool_call>[{"name": "get_weather", "parameters": {"city": "Oslo"}}]</tool_call>',
         [("get_weather", '{"city":"Oslo"}')]),
        ('<tool_call>[{"name": "get_weather", "arguments": "{\\"city\\": \\"Rome\\"}"}]</tool_call>',
         [("get_weather", '{"city":"Rome"}')]),
        ('<tool_call>[{"name": "get_time"}]</tool_call>', [("get_time", "{}")]),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>\n'
         '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>',
         [("get_weather", '{"city":"A"}'), ("get_time", "{}")]),
        ('[{"name": "get_weather", "arguments": {"city": "Bern"}}]', [("get_weather", '{"city":"Bern"}')]),
        ('```json\n[{"name": "get_time", "arguments": {}}]\n```', [("get_time", "{}")]),
        ('<tool_call>[{"type": "function", "function": {"name": "get_time", "arguments": "{}"}}]</tool_call>',
         [("get_time", "{}")]),
        ('<tool_call>[{"name": "get_time", "arguments": {}}] trailing words</tool_call>', [("get_time", "{}")]),
    ],
)
def test_calls_are_parsed_from_what_a_small_model_writes(text: str, expected: list) -> None:
    assert calls(text) == expected


def test_calls_get_fresh_ids_and_content_is_null_without_text() -> None:
    out = parse_tool_output('<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>', AUTO, numbered())
    assert out.content is None
    assert out.tool_calls == [ToolCall(id="call_1", name="get_time", arguments="{}")]


def test_text_around_the_block_is_content() -> None:
    out = parse_tool_output('Let me check.\n<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>\n', AUTO)
    assert out.content == "Let me check."
    assert len(out.tool_calls) == 1


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        '<tool_call>[{"name": "get_forecast", "arguments": {}}]</tool_call>',  # unknown function
        '<tool_call>[{"name": "get_weather", "arguments": {"city": </tool_call>',  # truncated JSON
        '<tool_call>[{"name": "get_weather", "arguments": "city=Paris"}]</tool_call>',  # arguments not JSON
        '<tool_call>[{"name": "get_weather", "arguments": [1, 2]}]</tool_call>',  # arguments not an object
        '<tool_call>[{"arguments": {}}]</tool_call>',  # no name
        '<tool_call>["get_weather"]</tool_call>',
        "<tool_call>get_weather(city='Paris')</tool_call>",
        '<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call><tool_call>oops</tool_call>',
        '{"answer": 42}',  # JSON, but not a call
        "[1, 2, 3]",
        "",
    ],
)
def test_anything_unparseable_falls_back_to_the_whole_text_as_content(text: str) -> None:
    out = parse_tool_output(text, AUTO)
    assert out == type(out)(content=text, tool_calls=[])


def test_an_empty_call_list_means_no_call() -> None:
    out = parse_tool_output("<tool_call>[]</tool_call>It is noon.", AUTO)
    assert out.content == "It is noon." and out.tool_calls == []


def test_parallel_false_and_legacy_keep_the_first_call_only() -> None:
    text = '<tool_call>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {}}]</tool_call>'
    assert len(calls(text)) == 2
    assert calls(text, ToolSpec((WEATHER, TIME), parallel=False)) == [("get_time", "{}")]
    assert calls(text, ToolSpec((WEATHER, TIME), legacy=True)) == [("get_time", "{}")]


def test_a_named_choice_only_accepts_that_function() -> None:
    named = ToolSpec((WEATHER, TIME), mode="named", forced_name="get_weather")
    assert calls('<tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>', named) == []
    prefix = assistant_prefix(named)
    assert calls(prefix + '{"city": "Paris"}}]', named) == [("get_weather", '{"city":"Paris"}')]


def test_history_rendering_round_trips_through_the_parser() -> None:
    original = [ToolCall("call_x", "get_weather", '{"city":"Paris"}'), ToolCall("call_y", "get_time", "{}")]
    parsed = parse_tool_output(format_tool_calls(original), AUTO, numbered())
    assert [(c.name, c.arguments) for c in parsed.tool_calls] == [(c.name, c.arguments) for c in original]


# --- streaming: the same answer whatever the chunking ------------------------------------------------------------


def run_stream(processor, text: str, size: int) -> tuple[str, ProcessedOutput, list[str]]:
    emitted = [processor.feed(text[i:i + size]) for i in range(0, len(text), size)]
    rest = processor.finish()
    return "".join(emitted) + rest.content_tail, rest, [e for e in emitted if e]


OUTPUTS = [
    "Plain answer, no tools at all.",
    'Sure.\n<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]</tool_call>',
    '<tool_call>[{"name": "get_weather", "arguments": {"city": "Paris"}}]',
    '<tool_call>[{"name": "nope", "arguments": {}}]</tool_call>',
    '  [{"name": "get_time", "arguments": {}}]',
    "I think <tool_ca is not a tag",
    "<tool_call>[]</tool_call>Nothing to call.",
    "<tool_call",
    "```python\nprint('hi')\n```",
    '```json\n[{"name": "get_time", "arguments": {}}]\n```',
    "`",
]


@pytest.mark.parametrize("text", OUTPUTS)
@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_streamed_tool_output_matches_the_batch_parse(text: str, size: int) -> None:
    content, rest, _ = run_stream(ToolCallOutput(AUTO, new_id=numbered()), text, size)
    batch = parse_tool_output(text, AUTO, numbered())
    assert [(c.name, c.arguments) for c in rest.tool_calls] == [(c.name, c.arguments) for c in batch.tool_calls]
    if batch.tool_calls:
        assert (content.strip() or None) == batch.content
    else:
        assert content.strip() == (batch.content or "").strip()


@pytest.mark.parametrize(
    ("text", "first_emitted_at"),
    [
        ("```python\nprint(1)\n```", "```p"),  # a code answer streams once it is not ```json
        ("```json\n{\"a\": 1}\n```", None),  # a fenced JSON answer is held: it may be a call list
        ("  {\"a\": 1}", None),
        ("`x` is a variable", "`x"),
    ],
)
def test_only_outputs_that_open_like_a_call_list_are_held(text: str, first_emitted_at: str | None) -> None:
    proc = ToolCallOutput(AUTO)
    emitted = ""
    for i, ch in enumerate(text):
        emitted += proc.feed(ch)
        if emitted:
            assert first_emitted_at is not None and text[: i + 1].startswith(first_emitted_at)
            break
    else:
        assert first_emitted_at is None
        assert proc.finish().content_tail == text


def test_content_streams_before_the_tag_and_the_tag_is_never_emitted() -> None:
    text = 'Checking the weather now. <tool_call>[{"name": "get_time", "arguments": {}}]</tool_call>'
    _, rest, emitted = run_stream(ToolCallOutput(AUTO), text, 4)
    assert "".join(emitted) == "Checking the weather now. "
    assert len(emitted) > 3  # it streamed, it did not wait for the end
    assert all("<" not in e for e in emitted)
    assert rest.content_tail == "" and len(rest.tool_calls) == 1


def test_a_prefilled_call_is_held_and_released_verbatim_when_it_fails() -> None:
    spec = ToolSpec((WEATHER,), mode="required")
    prefix = assistant_prefix(spec)
    proc = ToolCallOutput(spec, prefix)
    assert proc.feed('get_weather", "arguments": {"city": "Paris"}}]') == ""
    assert proc.finish().tool_calls[0].arguments == '{"city":"Paris"}'
    failed = ToolCallOutput(spec, prefix)
    assert failed.feed("I cannot do that") == ""
    assert failed.finish().content_tail == prefix + "I cannot do that"


def test_tool_processor_reports_completion_when_the_block_closes() -> None:
    proc = ToolCallOutput(AUTO)
    proc.feed('<tool_call>[{"name": "get_time", "arguments": {}}]')
    assert not proc.complete
    proc.feed("</tool_call>")
    assert proc.complete


def test_plain_output_passes_everything_with_its_prefix() -> None:
    content, rest, _ = run_stream(PlainOutput("pre:"), "abc", 1)
    assert content == "pre:abc" and rest.tool_calls == []


# --- JSON mode ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"a": 1}', '{"a": 1}'),
        ('Sure! Here it is: {"a": {"b": [1, 2]}, "c": "}"} Hope that helps.', '{"a": {"b": [1, 2]}, "c": "}"}'),
        ('{"a": "\\"}"} tail', '{"a": "\\"}"}'),
        ('{broken} then {"ok": true}', '{"ok": true}'),
        ("no json here", None),
        ('{"open": ', None),
    ],
)
def test_extract_json_object(text: str, expected: str | None) -> None:
    assert extract_json_object(text) == expected


def test_tracker_finds_the_end_across_chunks() -> None:
    tracker = JsonObjectTracker()
    assert not tracker.feed('{"k": "va')
    assert not tracker.feed('l}ue", "n": [1')
    assert tracker.feed(']} and more')
    assert tracker.end == len('{"k": "val}ue", "n": [1]}')


@pytest.mark.parametrize("size", [1, 3, 100])
def test_json_output_stops_at_the_end_of_the_object(size: int) -> None:
    proc = JsonOutput("{")
    content, _, _ = run_stream(proc, '"answer": 42}\n\nThis is the answer.', size)
    assert content == '{"answer": 42}'
    assert json.loads(content) == {"answer": 42}
    assert proc.complete


def test_json_output_passes_an_unfinished_object_through() -> None:
    proc = JsonOutput("{")
    content, _, _ = run_stream(proc, '"answer": ', 2)
    assert content == '{"answer": ' and not proc.complete
