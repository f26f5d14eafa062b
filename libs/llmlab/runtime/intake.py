"""Checks every request message gets before a servicer sees it: decodable, no NUL in text, lists of sane length.

Envoy's transcoder puts whatever a query string or JSON body holds into string fields: `?search=%FF` arrives as
bytes that are not UTF-8 (the protobuf runtime refuses to decode them) and `%00` or `"\\u0000"` as a NUL
character, which Postgres refuses in text (`invalid byte sequence for encoding "UTF8": 0x00`). Both are the
client's mistake, so both become a 400 naming the field here, once for every service, instead of a 500 from
whichever query first meets them. Lists are capped here too (MAX_LIST_ITEMS, far above any documented use; a
service states its own tighter bound per field); nesting is already capped by Envoy's JSON parser.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.protobuf.message import Message

from .errors import InvalidArgument, validation_error

_MAX_DEPTH = 64  # deeper messages than any route's JSON can produce; the walk stops there
MAX_LIST_ITEMS = 10_000
NUL = "must not contain NUL characters"
TOO_MANY = f"must have at most {MAX_LIST_ITEMS} items"


class Undecodable:
    """What the wrapped deserializer returns for bytes the protobuf runtime refused (invalid UTF-8)."""

    __slots__ = ()


UNDECODABLE = Undecodable()


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """A request deserializer that returns ``UNDECODABLE`` instead of failing the call with gRPC's own error."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:  # DecodeError and friends: the bytes, not the server, are wrong
            return UNDECODABLE

    return deserialize


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def first_violation(msg: Message, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """(JSON path, constraint) of the first string or map key holding a NUL or list too long in ``msg``."""
    if depth > _MAX_DEPTH:
        return None
    full = msg.DESCRIPTOR.full_name
    for fd, value in msg.ListFields():
        # Struct and Value are JSON in the client's eyes: `parameters.style`, not `parameters.fields.style...`.
        wrapper = full in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue")
        name = path if wrapper else _join(path, fd.name)
        if fd.is_repeated and len(value) > MAX_LIST_ITEMS:
            return name, TOO_MANY
        if fd.is_repeated and fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            value_fd = fd.message_type.fields_by_name["value"]
            for key, item in value.items():
                key_path = _join(name, str(key))
                if isinstance(key, str) and "\x00" in key:
                    return key_path, NUL
                if value_fd.message_type is not None:
                    found = first_violation(item, key_path, depth + 1)
                else:
                    found = (key_path, NUL) if isinstance(item, str) and "\x00" in item else None
                if found:
                    return found
        elif fd.is_repeated:
            for i, item in enumerate(value):
                item_path = f"{name}[{i}]"
                if isinstance(item, Message):
                    found = first_violation(item, item_path, depth + 1)
                    if found:
                        return found
                elif isinstance(item, str) and "\x00" in item:
                    return item_path, NUL
        elif isinstance(value, Message):
            found = first_violation(value, name, depth + 1)
            if found:
                return found
        elif isinstance(value, str) and "\x00" in value:
            return name, NUL
    return None


def check(request: Any) -> None:
    """Raise the 400 a request deserves before any servicer code runs; no-op for good requests."""
    if request is UNDECODABLE:
        raise InvalidArgument(
            "Request text must be valid UTF-8",
            details={"constraint": "must be valid UTF-8"},
            field_violations=[("request", "must be valid UTF-8")],
        )
    if isinstance(request, Message):
        found = first_violation(request)
        if found is not None:
            raise validation_error(found[0], None, found[1])
