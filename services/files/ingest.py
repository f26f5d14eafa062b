"""Streaming a file into the blob store: size cap, SHA-256, row checks, all in one pass over the chunks.

The object becomes visible only when every check passed (the writer commits at the end of its block); a refused
or interrupted file leaves nothing in the store and nothing in the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from llmlab.runtime import InvalidArgument

from . import domain
from .blobstore import BlobStore


class Checker(Protocol):
    rows: int
    ok: bool

    def feed(self, chunk: bytes) -> None: ...
    def finish(self) -> None: ...
    def summary(self) -> str: ...
    def numbers(self) -> list[int]: ...


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str
    rows: int | None


class RowsRefused(Exception):
    """The file's rows failed their checks; carries the checker for the caller's error shape."""

    def __init__(self, checker: Checker) -> None:
        super().__init__(checker.summary())
        self.checker = checker


async def ingest(store: BlobStore, key: str, chunks: AsyncIterator[bytes], *, max_bytes: int,
                 checker: Checker | None = None, size_param: str | None = "file") -> Stored:
    """Write `chunks` under `key`; InvalidArgument(413) past `max_bytes`, RowsRefused when rows fail."""
    digest = hashlib.sha256()
    size = 0
    async with store.writer(key) as writer:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise domain.too_large(max_bytes, size_param)
            digest.update(chunk)
            if checker is not None:
                checker.feed(chunk)
            await writer.write(chunk)
        if checker is not None:
            checker.finish()
            if not checker.ok:
                raise RowsRefused(checker)
    return Stored(key, size, digest.hexdigest(), checker.rows if checker is not None else None)


def empty_file(param: str = "file") -> InvalidArgument:
    return domain.serving_error("The file is empty", param, "invalid_file")
