"""Short text fields as every service accepts them: trimmed, visible, bounded, and quoted only as an excerpt."""

from __future__ import annotations

import unicodedata
from typing import Any

from .errors import excerpt, validation_error

# Unicode general categories of characters a reader cannot see on their own: separators (spaces, line and
# paragraph separators) and "other" (controls, format characters such as U+200B ZERO WIDTH SPACE and U+FEFF,
# surrogates, private use, unassigned). Letters, marks, numbers, punctuation and symbols are visible.
_INVISIBLE_CATEGORIES = ("Z", "C")
NOT_VISIBLE = "must contain a visible character (not only spaces, zero-width or control characters)"


def _invisible(ch: str) -> bool:
    return unicodedata.category(ch)[0] in _INVISIBLE_CATEGORIES


def code_points(text: str, limit: int = 8) -> str:
    """Invisible text made readable in an error: `U+200B U+200B`, the first `limit` characters and a count."""
    shown = " ".join(f"U+{ord(ch):04X}" for ch in text[:limit])
    return shown if len(text) <= limit else f"{shown} … ({len(text)} characters)"


def trim(text: str) -> str:
    """`text` without leading and trailing invisible characters (whitespace, zero-width and control characters)."""
    start, end = 0, len(text)
    while start < end and _invisible(text[start]):
        start += 1
    while end > start and _invisible(text[end - 1]):
        end -= 1
    return text[start:end]


def visible_text(field: str, value: Any, *, max_chars: int, required: bool = True) -> str:
    """A short text field: a string, trimmed, at most `max_chars` characters, with at least one visible character
    (required) or empty. Raises `validation_error` naming `field`."""
    if not isinstance(value, str):
        raise validation_error(field, scalar(value), "must be a string")
    text = trim(value)
    if len(text) > max_chars:
        raise validation_error(field, excerpt(text), f"must be at most {max_chars} characters")
    if required and not value:
        raise validation_error(field, value, "is required")
    if required and not text:
        raise validation_error(field, code_points(value), NOT_VISIBLE)
    return text


def scalar(value: Any) -> Any:
    """What an error may show of a JSON value of the wrong kind: a scalar itself (text as an excerpt), else its kind."""
    if isinstance(value, str):
        return excerpt(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return "an object" if isinstance(value, dict) else "a list" if isinstance(value, list) else type(value).__name__
