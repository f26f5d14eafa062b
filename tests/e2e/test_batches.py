"""OpenAI batches through Envoy with the unmodified `openai` SDK (docs/batches.md): upload a JSONL file, create,
retrieve, list and cancel batches, download the output and error files; bad input answers OpenAI's errors."""

from __future__ import annotations

import asyncio
import io
import json
import time

import openai
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def sdk(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


def jsonl(rows: list[dict]) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in rows)


def chat_line(i: int, url: str = "/v1/chat/completions", **body) -> dict:
    return {"custom_id": f"req-{i}", "method": "POST", "url": url,
            "body": {"model": MODEL, "messages": [{"role": "user", "content": f"Count to {i % 5 + 2}."}],
                     "max_tokens": 8, "temperature": 0, **body}}


async def upload(sdk: openai.AsyncOpenAI, rows: list[dict], purpose: str = "batch") -> str:
    f = await sdk.files.create(file=("input.jsonl", io.BytesIO(jsonl(rows))), purpose=purpose)
    return f.id


async def wait_done(sdk: openai.AsyncOpenAI, batch_id: str, within_s: float = 240) -> openai.types.Batch:
    deadline = time.monotonic() + within_s
    seen = []
    while time.monotonic() < deadline:
        b = await sdk.batches.retrieve(batch_id)
        seen.append((b.status, b.request_counts.completed if b.request_counts else 0))
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        await asyncio.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not end: {seen[-5:]}")


async def test_batch_runs_to_completion_with_the_sdk(sdk, http):
    rows = [chat_line(i) for i in range(12)]
    rows.insert(3, chat_line(99, url="/v1/completions"))  # another endpoint: this line alone fails
    rows.insert(6, {"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL}})  # no messages: a 400 in the error file, the rest runs
    file_id = await upload(sdk, rows)
    batch = await sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata={"purpose": "e2e"})
    assert batch.id.startswith("batch_") and batch.object == "batch" and batch.status == "validating"
    assert batch.metadata == {"purpose": "e2e"} and batch.output_file_id is None
    assert batch.expires_at - batch.created_at == 24 * 3600

    # live traffic keeps working while the batch runs
    live_reply = await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                                   max_tokens=4)
    assert live_reply.choices[0].message.content is not None
    done = await wait_done(sdk, batch.id)
    assert done.status == "completed", done
    assert done.request_counts.total == 14
    assert done.request_counts.completed == 12 and done.request_counts.failed == 2
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at

    out = [json.loads(line) for line in (await sdk.files.content(done.output_file_id)).text.splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"req-{i}" for i in range(12))
    for o in out:
        assert o["id"].startswith("batch_req_") and o["error"] is None
        r = o["response"]
        assert r["status_code"] == 200 and r["request_id"].startswith("req_")
        assert r["body"]["object"] == "chat.completion" and r["body"]["model"] == MODEL
        assert r["body"]["choices"][0]["message"]["content"]
        assert 0 < r["body"]["usage"]["completion_tokens"] <= 8
    errors = {e["custom_id"]: e for e in
              (json.loads(line) for line in (await sdk.files.content(done.error_file_id)).text.splitlines())}
    assert set(errors) == {"req-99", "bad-body"}
    assert errors["req-99"]["response"] is None and errors["req-99"]["error"]["code"] == "mismatched_endpoint"
    bad = errors["bad-body"]["response"]
    assert bad["status_code"] == 400 and bad["body"]["error"]["param"] == "messages"
    assert errors["bad-body"]["error"] is None

    # the same greedy request live gives the same answer as its batch line
    live = await sdk.chat.completions.create(**rows[0]["body"])
    first = next(o for o in out if o["custom_id"] == "req-0")
    assert first["response"]["body"]["choices"][0]["message"]["content"] == live.choices[0].message.content

    # the output file is the owner's, purpose batch_output
    meta = await sdk.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output" and meta.bytes > 0

    page = await sdk.batches.list(limit=100)
    assert batch.id in [b.id for b in page.data]


async def test_batch_list_pages_newest_first(sdk):
    file_id = await upload(sdk, [chat_line(1)])
    ids = [(await sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h")).id for _ in range(3)]
    first = await sdk.batches.list(limit=2)
    assert [b.id for b in first.data] == ids[::-1][:2] and first.has_more
    second = await sdk.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == ids[0]
    for batch_id in ids:
        await wait_done(sdk, batch_id)


async def test_cancel_a_running_batch(sdk):
    # More lines than the workers hold at once (6 consumers x 8-line chunks by default), so that some are still
    # queued when the cancel arrives however fast the engine is.
    lines = 120
    file_id = await upload(sdk, [chat_line(i, max_tokens=16) for i in range(lines)])
    batch = await sdk.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                     completion_window="24h")
    deadline = time.monotonic() + 120
    while (b := await sdk.batches.retrieve(batch.id)).request_counts.completed < 1:  # running, lines done
        assert time.monotonic() < deadline and b.status in ("validating", "in_progress"), b
        await asyncio.sleep(0.1)
    cancelled = await sdk.batches.cancel(batch.id)
    assert cancelled.status == "cancelling" and cancelled.cancelling_at is not None
    done = await wait_done(sdk, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    counts = done.request_counts
    assert counts.total == lines and counts.completed + counts.failed == lines
    assert 1 <= counts.completed < lines  # it stopped early; what ran is kept
    out = (await sdk.files.content(done.output_file_id)).text.splitlines()
    errors = [json.loads(line) for line in (await sdk.files.content(done.error_file_id)).text.splitlines()]
    assert len(out) == counts.completed and len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"batch_cancelled"}
    with pytest.raises(openai.NotFoundError):
        await sdk.batches.cancel(batch.id + "x")


async def test_batch_bad_input(sdk, http):
    tune = await upload(sdk, [{"messages": [{"role": "user", "content": "hi"}]}], purpose="fine-tune")
    good = await upload(sdk, [chat_line(1)])
    cases = [
        ({"input_file_id": tune, "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400,
         "input_file_id"),
        ({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404,
         "input_file_id"),
        ({"input_file_id": good, "endpoint": "/v1/embeddings", "completion_window": "24h"}, 400, "endpoint"),
        ({"input_file_id": good, "endpoint": "/v1/chat/completions", "completion_window": "48h"}, 400,
         "completion_window"),
        ({"endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400, "input_file_id"),
    ]
    for body, status, param in cases:
        r = await http.post("/v1/batches", json=body)
        assert r.status_code == status, (body, r.text)
        err = r.json()
        assert err["error"]["param"] == param and err["error"]["message"] and err["request_id"], err
    r = await http.get("/v1/batches/batch_doesnotexist")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error" and r.json()["request_id"]
    r = await http.get("/v1/batches", params={"limit": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    # the SDK raises the same
    with pytest.raises(openai.BadRequestError):
        await sdk.batches.create(input_file_id=good, endpoint="/v1/chat/completions",
                                 completion_window="1h")  # type: ignore[arg-type]
    # a file with nothing runnable fails the batch, with OpenAI's `errors`
    wrong = await upload(sdk, [chat_line(i, url="/v1/completions") for i in range(2)])
    b = await sdk.batches.create(input_file_id=wrong, endpoint="/v1/chat/completions", completion_window="24h")
    failed = await wait_done(sdk, b.id)
    assert failed.status == "failed" and failed.failed_at and failed.output_file_id is None
    assert [(e.code, e.line) for e in failed.errors.data] == [("mismatched_endpoint", 1), ("mismatched_endpoint", 2)]
    # a finished batch cannot be cancelled
    b = await sdk.batches.create(input_file_id=good, endpoint="/v1/chat/completions", completion_window="24h")
    await wait_done(sdk, b.id)
    r = await http.post(f"/v1/batches/{b.id}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "batch_not_cancellable"
