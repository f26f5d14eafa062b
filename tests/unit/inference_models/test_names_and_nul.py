"""Names the model registry stores, and NUL kept away from Postgres (services/inference/models/catalogue.py,
registry.py): every refusal is the validation error naming the field and the constraint."""

from __future__ import annotations

import pytest

from llmlab.runtime import InvalidArgument
from services.inference.models.catalogue import MAX_NAME_LENGTH, check_generation_defaults, require_name
from services.inference.models.registry import ModelFilter, decode_cursor, refuse_nul


def violation(exc: pytest.ExceptionInfo) -> tuple[str, str]:
    return exc.value.field_violations[0]


def test_names_are_trimmed():
    assert require_name("name", "  My model \n") == "My model"


@pytest.mark.parametrize("name", ["", "   ", "\u200b\u200b", "\u200b \ufeff", "\t\n"])
def test_a_name_needs_a_visible_character(name):
    with pytest.raises(InvalidArgument) as exc:
        require_name("name", name)
    assert violation(exc)[0] == "name" and "visible" in violation(exc)[1]


def test_a_long_name_is_refused():
    assert require_name("name", "x" * MAX_NAME_LENGTH) == "x" * MAX_NAME_LENGTH
    with pytest.raises(InvalidArgument) as exc:
        require_name("name", "x" * 60_000)
    assert violation(exc) == ("name", f"must be at most {MAX_NAME_LENGTH} characters")


def test_nul_in_a_name_is_refused():
    with pytest.raises(InvalidArgument) as exc:
        require_name("provider", "open\x00ai", 64)
    assert violation(exc) == ("provider", "must not contain NUL characters")


@pytest.mark.parametrize("value, field", [
    ("a\x00", "config"),
    ({"k": "v\x00"}, "config.k"),
    ({"k": ["ok", {"deep": "\x00"}]}, "config.k.deep"),
    ({"k\x00": 1}, "config"),
])
def test_refuse_nul_walks_objects_and_lists(value, field):
    with pytest.raises(InvalidArgument) as exc:
        refuse_nul("config", value)
    assert violation(exc) == (field, "must not contain NUL characters")


def test_list_filter_and_lookup_key_refuse_nul():
    with pytest.raises(InvalidArgument) as exc:
        ModelFilter(provider="\x00").where([])
    assert violation(exc)[0] == "provider"
    refuse_nul("id", "smollm2-135m-instruct")  # an ordinary key passes


def test_a_forged_cursor_with_nul_is_not_a_cursor():
    import base64
    import json

    forged = base64.urlsafe_b64encode(json.dumps(["2026-01-01T00:00:00+00:00", "a\x00"]).encode()).decode()
    with pytest.raises(InvalidArgument, match="not a cursor"):
        decode_cursor(forged)


def test_generation_defaults_use_the_shared_bounds():
    check_generation_defaults("parameters", {"temperature": 0.5, "max_length": 10})
    with pytest.raises(InvalidArgument) as exc:
        check_generation_defaults("parameters", {"top_p": 0})
    assert violation(exc) == ("parameters.top_p", "must be greater than 0 and at most 1")
    with pytest.raises(InvalidArgument) as exc:
        check_generation_defaults("parameters", {"max_length": 0})
    assert violation(exc) == ("parameters.max_length", "must be an integer at least 1")


