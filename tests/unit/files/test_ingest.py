"""Streaming a file into the store (services/files/ingest.py): the size cap is a 413 and keeps nothing; refused rows
keep nothing; a stored file has its size, rows and SHA-256."""

from __future__ import annotations

import hashlib

import pytest

from llmlab.runtime import InvalidArgument
from services.files import rows
from services.files.blobstore import FilesystemStore
from services.files.ingest import RowsRefused, ingest


async def body(*parts: bytes):
    for p in parts:
        yield p


async def test_over_the_limit_is_413_and_nothing_is_kept(tmp_path):
    store = FilesystemStore(tmp_path)
    with pytest.raises(InvalidArgument) as err:
        await ingest(store, "f/big", body(b"x" * 600, b"x" * 600), max_bytes=1000)
    assert err.value.status_http == 413 and err.value.metadata["param"] == "file"
    with pytest.raises(FileNotFoundError):
        await store.get("f/big")
    assert not list((tmp_path / ".tmp").iterdir())


async def test_refused_rows_keep_nothing_and_good_rows_are_counted(tmp_path):
    store = FilesystemStore(tmp_path)
    checker = rows.LineChecker(rows.PURPOSE_CHECKS["batch"])
    with pytest.raises(RowsRefused) as err:
        await ingest(store, "f/bad", body(b'{"custom_id": "a"}\n'), max_bytes=1000, checker=checker)
    assert err.value.checker.numbers() == [1]
    with pytest.raises(FileNotFoundError):
        await store.get("f/bad")
    data = b'{"q": 1}\n{"q": 2}\n'
    stored = await ingest(store, "f/ok", body(data[:5], data[5:]), max_bytes=1000,
                          checker=rows.LineChecker(rows.schema_check(None)))
    assert (stored.size, stored.rows, stored.sha256) == (len(data), 2, hashlib.sha256(data).hexdigest())
    assert await store.get("f/ok") == data
