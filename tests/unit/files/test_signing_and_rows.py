"""Signed URLs (services/files/signing.py), streamed row checks (rows.py) and the multipart reader (multipart.py)."""

from __future__ import annotations

import json
import time
import urllib.parse

import pytest

from llmlab.runtime import InvalidArgument, PermissionDenied, Unauthenticated
from services.files import domain, rows
from services.files.multipart import MultipartReader
from services.files.signing import Signer

SIGNER = Signer(b"k" * 32)


def test_signature_covers_method_token_filename_and_expiry():
    exp = int(time.time()) + 60
    sig = SIGNER.signature("GET", "tok", "a.csv", exp)
    SIGNER.verify("GET", "tok", "a.csv", exp, sig)
    SIGNER.verify("GET", "tok", "a.csv", exp, sig.upper())
    for args in (("PUT", "tok", "a.csv", exp), ("GET", "tok2", "a.csv", exp), ("GET", "tok", "b.csv", exp),
                 ("GET", "tok", "a.csv", exp + 1)):
        with pytest.raises(PermissionDenied):
            SIGNER.verify(*args, sig)
    with pytest.raises(PermissionDenied):
        Signer(b"x" * 32).verify("GET", "tok", "a.csv", exp, sig)
    with pytest.raises(PermissionDenied):
        SIGNER.verify("GET", "tok", "a.csv", exp, "é")


def test_expired_is_401_only_with_a_good_signature():
    past = int(time.time()) - 1
    with pytest.raises(Unauthenticated):
        SIGNER.verify("PUT", "t", "", past, SIGNER.signature("PUT", "t", "", past))
    with pytest.raises(PermissionDenied):
        SIGNER.verify("PUT", "t", "", past, "0" * 64)


def test_urls_carry_what_is_signed():
    url = urllib.parse.urlsplit(SIGNER.download_url("http://h:1/", "tok", "my file.json", 2000000000))
    assert url.path == "/downloads/tok/my%20file.json"
    q = dict(urllib.parse.parse_qsl(url.query))
    SIGNER.verify("GET", "tok", "my file.json", int(q["expires"]), q["signature"], now=0)


def feed(checker, data: bytes, size: int = 7):
    for i in range(0, len(data), size):  # lines split across chunks
        checker.feed(data[i:i + size])
    checker.finish()
    return checker


def test_batch_lines_name_their_numbers():
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}
    data = b"\n".join([json.dumps(good).encode(), b"", b"{oops", json.dumps({"custom_id": "b"}).encode(),
                       json.dumps({**good, "method": "GET"}).encode(), b"\xff\xfe", json.dumps(good).encode()])
    c = feed(rows.LineChecker(rows.PURPOSE_CHECKS["batch"]), data)
    assert not c.ok and c.rows == 6 and c.numbers() == [3, 4, 5, 6]
    assert "line 4: missing method, url, body" in c.summary() and "line 6: not UTF-8" in c.summary()


def test_fine_tune_lines():
    check = rows.PURPOSE_CHECKS["fine-tune"]
    assert check({"messages": [{"role": "user", "content": "x"}]}) is None
    assert check({"prompt": "a", "completion": "b"}) is None
    assert check({"messages": []}) and check({"prompt": "a"}) and check([1])


def test_many_failures_are_counted_not_listed():
    c = feed(rows.LineChecker(rows.PURPOSE_CHECKS["batch"]), b"1\n" * 50)
    assert c.failed == 50 and len(c.failures) == rows.MAX_REPORTED and c.summary().endswith("and 40 more")


def test_schema_rows_and_schema_itself():
    schema = {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}
    c = feed(rows.LineChecker(rows.schema_check(schema), "row"), b'{"id":"1"}\n{"id":2}\n{}\n')
    assert c.numbers() == [2, 3] and "row 2: id: 2 is not of type 'string'" in c.summary()
    assert rows.schema_problem({"type": "nonsense"}) and rows.schema_problem(schema) is None
    with pytest.raises(InvalidArgument):
        domain.new_dataset("x", "", "jsonl", {"type": 5}, [], {})


def test_json_and_csv_datasets():
    check = rows.schema_check({"type": "object", "required": ["a"]})
    c = feed(rows.JsonDocumentChecker(check), b'[{"a":1},{"b":2}]')
    assert c.rows == 2 and c.numbers() == [2]
    assert not feed(rows.JsonDocumentChecker(check), b'{"a":1}').ok
    csv_data = b'a,b\r\n1,"two\r\nlines"\r\n3,"say ""hi"""\r\n4,5'
    assert feed(rows.CsvCounter(), csv_data, 3).rows == 3


def test_human_size_and_filenames():
    assert domain.human_size(512) == "512B" and domain.human_size(2516582) == "2.4MB"
    assert domain.safe_filename("../../etc/passwd") == "passwd"
    assert domain.safe_filename("a b<script>.jsonl") == "a b_script_.jsonl"
    assert domain.safe_filename("..") == "file"


async def body(parts: list[bytes]):
    for p in parts:
        yield p


async def test_multipart_reader_streams_parts():
    raw = (b"--XX\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n"
           b"--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\n"
           b"Content-Type: application/jsonl\r\n\r\n" + b"0123456789" * 1000 + b"\r\n--XX--\r\n")
    reader = MultipartReader(body([raw[i:i + 333] for i in range(0, len(raw), 333)]),
                             "multipart/form-data; boundary=XX")
    part = await reader.next_part()
    assert part.name == "purpose" and part.filename is None
    assert await reader.read() == b"batch" and await reader.read() is None
    part = await reader.next_part()
    assert (part.name, part.filename, part.content_type) == ("file", "in.jsonl", "application/jsonl")
    data = b""
    while (c := await reader.read()) is not None:
        data += c
    assert data == b"0123456789" * 1000
    assert await reader.next_part() is None


async def test_multipart_reader_takes_utf8_in_headers():
    raw = ('--XX\r\nContent-Disposition: form-data; name="\U0009eb9ay"; filename="données.jsonl"\r\n\r\nx\r\n'
           "--XX--\r\n").encode()
    reader = MultipartReader(body([raw]), "multipart/form-data; boundary=XX")
    part = await reader.next_part()
    assert (part.name, part.filename, part.content_type) == ("\U0009eb9ay", "données.jsonl", "application/octet-stream")


async def test_multipart_reader_refuses_bad_bodies():
    for content_type in ("text/plain", "multipart/form-data"):
        with pytest.raises(InvalidArgument):
            MultipartReader(body([b""]), content_type)
    with pytest.raises(InvalidArgument):  # a boundary outside latin-1 is read, then the body does not match it
        await MultipartReader(body([b"x"]), "multipart/form-data; boundary=\u2603").next_part()
    reader = MultipartReader(body([b"--XX\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc"]),
                             "multipart/form-data; boundary=XX")
    await reader.next_part()
    with pytest.raises(InvalidArgument):
        while await reader.read() is not None:
            pass
