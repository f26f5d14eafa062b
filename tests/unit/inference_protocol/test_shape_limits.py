"""Bodies the /v1 routes parse themselves: nesting depth, array length, NUL and invalid text are 400s naming the field
(docs: issue 7's hardening; services/inference/openai/validation.py)."""

from __future__ import annotations

import json

import pytest

from services.inference.openai import (
    MALFORMED_JSON,
    MAX_JSON_ARRAY,
    MAX_JSON_DEPTH,
    ProtocolError,
    load_json_body,
    parse_chat_request,
    parse_completion_request,
)


def nested(levels: int) -> str:
    return "[" * levels + "]" * levels


def chat(**extra) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH + 1, 1_000, 100_000])
def test_deep_nesting_is_a_400_naming_the_field(levels):
    body = '{"model": "m", "prompt": "x", "logit_bias": ' + nested(levels) + "}"
    with pytest.raises(ProtocolError) as err:
        parse_completion_request(body.encode())
    assert err.value.status == 400 and err.value.code == "nesting_too_deep"
    assert err.value.param == "logit_bias" and len(err.value.message) < 200


def test_nesting_within_the_limit_is_parsed():
    schema: dict = {"type": "object"}
    for _ in range((MAX_JSON_DEPTH - 6) // 2):  # two levels per step: properties, then the property
        schema = {"type": "object", "properties": {"a": schema}}
    req = parse_chat_request(json.dumps(chat(response_format={
        "type": "json_schema", "json_schema": {"name": "deep", "schema": schema}})).encode())
    assert req.response_format.type == "json_schema"


def test_an_array_past_the_cap_is_refused_before_any_field_is_read():
    body = json.dumps({"model": "m", "prompt": [1] * (MAX_JSON_ARRAY + 1)})
    with pytest.raises(ProtocolError) as err:
        load_json_body(body)
    assert (err.value.param, err.value.code) == ("prompt", "array_above_max_length")
    assert str(MAX_JSON_ARRAY) in err.value.message


@pytest.mark.parametrize("body, param", [
    (chat(messages=[{"role": "user", "content": "a\u0000b"}]), "messages"),
    (chat(user="\u0000"), "user"),
    ({**chat(), "x\u0000": 1}, "x\u0000"),
    (chat(stop=["ok", "\u0000"]), "stop"),
])
def test_nul_in_any_string_is_a_400(body, param):
    with pytest.raises(ProtocolError) as err:
        parse_chat_request(json.dumps(body).encode())
    assert err.value.status == 400 and err.value.param == param and "NUL" in err.value.message


def test_unpaired_surrogate_is_a_400():
    with pytest.raises(ProtocolError) as err:
        parse_chat_request(b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}')
    assert err.value.param == "messages" and "surrogate" in err.value.message


@pytest.mark.parametrize("raw", [b'{"model": "m", "prompt": "\xff\xfe"}', b"\xc3\x28"])
def test_invalid_utf8_is_malformed_json(raw):
    with pytest.raises(ProtocolError) as err:
        parse_completion_request(raw)
    assert err.value.status == 400 and err.value.message == MALFORMED_JSON


def test_an_encoded_surrogate_is_refused_too():
    with pytest.raises(ProtocolError) as err:  # CESU-8: the parser lets it through as a lone surrogate
        parse_completion_request(b'{"model": "m", "prompt": "\xed\xa0\x80"}')
    assert err.value.status == 400 and err.value.param == "prompt"
