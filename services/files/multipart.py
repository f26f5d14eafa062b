"""A streaming reader of multipart/form-data bodies (POST /v1/files) over python-multipart's push parser.

The body arrives as a stream of chunks; parts are read one after the other and each part's data in chunks, so a
file part goes to the blob store without ever being held whole.
"""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from llmlab.runtime import validation_error


@dataclass
class Part:
    """One part's headers: its form field name, and a filename for file parts."""

    name: str
    filename: str | None
    content_type: str


def boundary_of(content_type: str) -> bytes:
    kind, options = parse_options_header((content_type or "").encode("utf-8", "replace"))
    if kind != b"multipart/form-data" or not options.get(b"boundary"):
        raise validation_error("Content-Type", content_type, "must be multipart/form-data with a boundary",
                               message="The body must be multipart/form-data (parts `file` and `purpose`)")
    return options[b"boundary"]


class MultipartReader:
    """`await next_part()` until None; between, `await read()` a part's data until None."""

    def __init__(self, chunks: AsyncIterator[bytes], content_type: str) -> None:
        self._chunks = chunks
        self._events: collections.deque[tuple[str, object]] = collections.deque()
        self._field = bytearray()
        self._value = bytearray()
        self._headers: dict[str, bytes] = {}
        self._in_part = False
        self._source_done = False
        self._finished = False
        self._parser = MultipartParser(boundary_of(content_type), {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": lambda: self._events.append(("part", dict(self._headers))),
            "on_part_data": lambda d, s, e: self._events.append(("data", bytes(d[s:e]))),
            "on_part_end": lambda: self._events.append(("end", None)),
            "on_end": self._end,
        })

    def _begin(self) -> None:
        self._headers = {}

    def _end(self) -> None:
        self._finished = True

    def _header_end(self) -> None:
        # Values stay bytes: parse_options_header encodes a str as latin-1 and fails on other characters (a part
        # name in UTF-8, found by the fuzz suite); names and filenames are decoded once parsed.
        self._headers[self._field.decode("latin-1").lower()] = bytes(self._value)
        self._field.clear()
        self._value.clear()

    async def _pump(self) -> bool:
        """Parse the next chunk of the body; False once it is exhausted."""
        if self._source_done:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._source_done = True
            self._parser.finalize()
            return bool(self._events)
        try:
            self._parser.write(chunk)
        except MultipartParseError:
            raise validation_error("body", "(multipart)", "must be a well-formed multipart/form-data body",
                                   message="Malformed multipart/form-data body") from None
        return True

    async def _event(self) -> tuple[str, object] | None:
        while not self._events:
            if not await self._pump():
                return None
        return self._events.popleft()

    async def next_part(self) -> Part | None:
        while True:
            event = await self._event()
            if event is None:
                if self._in_part or not self._finished:
                    raise validation_error("body", "(multipart)", "ended before its closing boundary",
                                           message="Truncated multipart/form-data body")
                return None
            kind, payload = event
            if kind == "part":
                assert isinstance(payload, dict)
                self._in_part = True
                _, options = parse_options_header(payload.get("content-disposition", b""))
                filename = options.get(b"filename")
                content_type = payload.get("content-type", b"application/octet-stream")
                return Part(
                    name=options.get(b"name", b"").decode("utf-8", "replace"),
                    filename=filename.decode("utf-8", "replace") if filename is not None else None,
                    content_type=content_type.decode("utf-8", "replace").strip() or "application/octet-stream",
                )
            if kind == "end":
                self._in_part = False

    async def read(self) -> bytes | None:
        """The current part's next chunk of data; None at its end."""
        while True:
            event = await self._event()
            if event is None:
                raise validation_error("body", "(multipart)", "ended inside a part",
                                       message="Truncated multipart/form-data body")
            kind, payload = event
            if kind == "data":
                assert isinstance(payload, bytes)
                if payload:
                    return payload
            elif kind == "end":
                self._in_part = False
                return None
