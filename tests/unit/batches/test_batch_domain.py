"""Batch rules without I/O (services/inference/batches/domain.py): create checks, input lines, output lines."""

from __future__ import annotations

import json

import pytest

from services.inference.batches import domain
from services.inference.openai.validation import ProtocolError


def line(i: int, url: str = "/v1/chat/completions", **extra) -> bytes:
    row = {"custom_id": f"c{i}", "method": "POST", "url": url, "body": {"model": "m", "messages": []}, **extra}
    return json.dumps(row).encode()


def test_check_create_accepts_the_documented_request() -> None:
    spec = domain.check_create("file-1", "/v1/chat/completions", "24h", {"k": "v"})
    assert spec.metadata == {"k": "v"} and domain.WINDOWS[spec.completion_window] == 86400


@pytest.mark.parametrize(("args", "param", "status"), [
    (("", "/v1/chat/completions", "24h", {}), "input_file_id", 400),
    (("f", "/v1/embeddings", "24h", {}), "endpoint", 400),
    (("f", "", "24h", {}), "endpoint", 400),
    (("f", "/v1/completions", "48h", {}), "completion_window", 400),
    (("f", "/v1/completions", "24h", {str(i): "v" for i in range(17)}), "metadata", 400),
    (("f", "/v1/completions", "24h", {"k": "v" * 513}), "metadata", 400),
])
def test_check_create_refuses_bad_input(args, param, status) -> None:
    with pytest.raises(ProtocolError) as exc:
        domain.check_create(*args)
    assert exc.value.param == param and exc.value.status == status


def test_parse_lines_keeps_runnable_lines_and_reports_bad_ones_per_line() -> None:
    data = b"\n".join([line(0), b"", b"{not json", line(1, url="/v1/completions"), line(0),
                       json.dumps({"custom_id": "x", "method": "GET", "url": "/v1/chat/completions",
                                   "body": {}}).encode(), line(2)])
    lines, errors = domain.parse_lines(data, "/v1/chat/completions")
    assert errors == []
    assert [ln.index for ln in lines] == list(range(6))  # blank lines are skipped, not counted
    ok = [ln for ln in lines if ln.error is None]
    assert [ln.custom_id for ln in ok] == ["c0", "c2"]
    codes = [(ln.error["code"], ln.error["line"]) for ln in lines if ln.error is not None]
    assert codes == [("invalid_json_line", 3), ("mismatched_endpoint", 4), ("duplicate_custom_id", 5),
                     ("invalid_method", 6)]


def test_a_file_with_nothing_to_run_fails_the_batch() -> None:
    assert domain.parse_lines(b"\n\n", "/v1/completions")[1][0]["code"] == "empty_file"
    _, errors = domain.parse_lines(line(0, url="/v1/completions"), "/v1/chat/completions")
    assert errors[0]["code"] == "mismatched_endpoint" and errors[0]["line"] == 1


def test_output_lines_have_openais_shape_and_stable_ids() -> None:
    ok = domain.output_line("batch_abc", 3, "c3", 200, {"object": "chat.completion"})
    assert ok == {"id": "batch_req_abc_3", "custom_id": "c3",
                  "response": {"status_code": 200, "request_id": "req_abc_3", "body": {"object": "chat.completion"}},
                  "error": None}
    never_ran = domain.output_line("batch_abc", 4, "c4", 0, None, {"code": "batch_expired", "message": "m"})
    assert never_ran["response"] is None and never_ran["error"]["code"] == "batch_expired"
    assert domain.line_request_id("batch_abc", 3) == ok["response"]["request_id"]
    assert domain.jsonl([ok, never_ran]).count(b"\n") == 2


def test_list_limit() -> None:
    assert domain.list_limit(None) == 20 and domain.list_limit(100) == 100
    for bad in (0, 101):
        with pytest.raises(ProtocolError):
            domain.list_limit(bad)
