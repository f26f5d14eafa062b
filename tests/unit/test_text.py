"""Short text fields (libs/llmlab/runtime/text.py): trimmed, visible by Unicode category, bounded, quoted briefly."""

import pytest

from llmlab.runtime import InvalidArgument
from llmlab.runtime.errors import EXCERPT_CHARS
from llmlab.runtime.text import trim, visible_text


@pytest.mark.parametrize(
    "invisible",
    [
        "\u200b\u200b",  # ZERO WIDTH SPACE (Cf)
        "\u200c\u200d\u2060\ufeff",  # zero-width non-joiner, joiner, word joiner, BOM (Cf)
        " \t\n\u00a0\u3000",  # ASCII, no-break and ideographic spaces (Zs, Cc)
        "\u2028\u2029",  # line and paragraph separators (Zl, Zp)
        "\x01\x7f\x9f",  # controls (Cc)
        "\ue000",  # private use (Co)
    ],
)
def test_a_name_of_only_invisible_characters_is_refused(invisible):
    with pytest.raises(InvalidArgument) as err:
        visible_text("name", invisible, max_chars=255)
    d = err.value.details
    assert d["field"] == "name" and "visible character" in d["constraint"]


def test_empty_is_required_unless_optional():
    with pytest.raises(InvalidArgument) as err:
        visible_text("name", "", max_chars=255)
    assert err.value.details["constraint"] == "is required"
    assert visible_text("description", " \u200b ", max_chars=10, required=False) == ""


def test_trimmed_at_both_ends_only():
    assert visible_text("name", "\u200b  My run \u00a0\n", max_chars=255) == "My run"
    # Inside the text, joiners are meaningful (emoji sequences) and stay.
    family = "\U0001f468\u200d\U0001f469\u200d\U0001f467"
    assert trim(f" {family} ") == family
    assert visible_text("name", "é", max_chars=1) == "é"


def test_length_is_counted_after_trimming_and_a_long_value_is_only_excerpted():
    assert visible_text("name", " " + "x" * 255 + " ", max_chars=255) == "x" * 255
    with pytest.raises(InvalidArgument) as err:
        visible_text("name", "x" * 70_000, max_chars=255)
    d = err.value.details
    assert d["constraint"] == "must be at most 255 characters"
    assert d["value"].endswith("(70000 characters)") and len(d["value"]) < 2 * EXCERPT_CHARS


def test_not_a_string():
    for value, shown in [(None, None), (5, 5), (["a"], "a list"), ({"a": 1}, "an object")]:
        with pytest.raises(InvalidArgument) as err:
            visible_text("tags", value, max_chars=10)
        assert err.value.details["value"] == shown and err.value.details["constraint"] == "must be a string"


def test_an_invisible_value_is_shown_as_code_points():
    with pytest.raises(InvalidArgument) as err:
        visible_text("name", "\u200b\u200b", max_chars=255)
    assert err.value.details["value"] == "U+200B U+200B"
    with pytest.raises(InvalidArgument) as err:
        visible_text("name", " " * 60_000, max_chars=255)
    assert err.value.details["value"] == " ".join(["U+0020"] * 8) + " … (60000 characters)"
