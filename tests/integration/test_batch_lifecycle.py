"""The batch lifecycle's rules on the real Postgres, Redis and files service (no model needed): a line's result is
written once with its count, nothing is written after the seal, an expired batch keeps its partial results, a
cancelled one ends once no line is running, and each ending publishes its event."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from llmlab.files.v1 import files_service_pb2 as files_pb
from llmlab.files.v1 import files_service_pb2_grpc as files_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import stream_key
from services.inference.batches import domain
from services.inference.batches.calls import Calls
from services.inference.batches.jobs import EVENTS_STREAM, BatchWorker
from services.inference.batches.repository import BatchRepository

PRINCIPAL = "user:owner-1"


@dataclass
class Stack:
    repo: BatchRepository
    worker: BatchWorker
    files: files_grpc.FileServiceStub
    app: ServiceApp


@pytest.fixture
async def stack(database_url, redis_url, schema, redis_prefix, tmp_path, monkeypatch) -> AsyncIterator[Stack]:
    from services.files.app import SPEC as FILES
    from services.files.settings import FilesSettings
    from services.inference.app import SPEC as INFERENCE
    from services.inference.settings import InferenceSettings

    common = {"environ": {}, "port": 0, "database_url": database_url, "redis_url": redis_url,
              "redis_prefix": redis_prefix, "shutdown_grace_seconds": 1.0}
    files = ServiceApp(FILES, load_settings(FilesSettings, "files", db_schema=f"{schema}_files",
                                            data_dir=str(tmp_path), **common))
    await files.start()
    monkeypatch.setenv("LLMLAB_FILES_TARGET", f"127.0.0.1:{files.port}")
    # The inference service's schema and queue, without its engine: this test runs no line.
    settings = load_settings(InferenceSettings, "inference", db_schema=f"{schema}_inf", load_on_start=False,
                             batch_claim_idle_ms=1000, **common)
    app = ServiceApp(INFERENCE, settings)
    await app.start()
    assert app.db is not None and app.events is not None
    repo = BatchRepository(app.db)
    worker = BatchWorker(repo, Calls(app.channel("files"), app.channel("inference")), app.redis, redis_prefix,
                         "test", app.events, settings)
    try:
        yield Stack(repo, worker, files_grpc.FileServiceStub(app.channel("files")), app)
    finally:
        await app.stop()
        await files.stop()


async def started(stack: Stack, n: int) -> str:
    rows = [json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                        "body": {"model": "m", "prompt": "p"}}).encode() for i in range(n)]
    rows.append(b'{"custom_id": "c0", "method": "POST", "url": "/v1/completions", "body": {}}')  # duplicate id
    lines, errors = domain.parse_lines(b"\n".join(rows), "/v1/completions")
    assert not errors
    batch_id = domain.new_batch_id()
    await stack.repo.insert(batch_id, "owner-1", PRINCIPAL, "/v1/completions", "file-x", "24h", 86400, {})
    claimed = await stack.repo.claim_validation(batch_id)
    assert claimed is not None
    assert await stack.repo.start(batch_id, claimed.attempt, lines, 4) == (n + 1 + 3) // 4
    return batch_id


def ok(batch_id: str, i: int) -> dict:
    return domain.output_line(batch_id, i, f"c{i}", 200, {"object": "text_completion", "i": i})


async def content(stack: Stack, file_id: str) -> list[dict]:
    data = bytearray()
    async for chunk in stack.files.GetFileContent(files_pb.GetFileContentRequest(file_id=file_id),
                                                  metadata=(("x-llmlab-principal", PRINCIPAL),)):
        data += chunk.data
    return [json.loads(line) for line in data.decode().splitlines()]


async def test_results_are_written_once_and_the_batch_completes(stack: Stack) -> None:
    batch_id = await started(stack, 5)
    row = await stack.repo.get(None, batch_id)
    assert (row.status, row.total, row.completed, row.failed) == ("in_progress", 6, 0, 1)  # the duplicate id
    assert await stack.repo.finish_line(batch_id, 0, "completed", ok(batch_id, 0))
    assert not await stack.repo.finish_line(batch_id, 0, "completed", ok(batch_id, 0))  # a late second run
    assert (await stack.repo.get(None, batch_id)).completed == 1  # counted once
    for i in range(1, 5):
        await stack.repo.finish_line(batch_id, i, "completed", ok(batch_id, i))
    await stack.worker.finalize_due()
    done = await stack.repo.get(None, batch_id)
    assert done.status == "completed" and done.completed_at and done.finalizing_at
    assert (done.completed, done.failed) == (5, 1)
    out = await content(stack, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"c{i}" for i in range(5)]
    [err] = await content(stack, done.error_file_id)
    assert err["error"]["code"] == "duplicate_custom_id" and err["response"] is None
    assert not await stack.repo.finish_line(batch_id, 4, "completed", ok(batch_id, 4))  # sealed
    events = await stack.app.redis.xrange(stream_key(stack.app.settings.redis_prefix, EVENTS_STREAM))
    [(_, fields)] = events
    assert fields[b"type"] == b"batch.completed"
    assert json.loads(fields[b"data"])["batch"]["id"] == batch_id


async def test_an_expired_batch_keeps_its_partial_results(stack: Stack) -> None:
    batch_id = await started(stack, 6)
    for i in (0, 2):
        await stack.repo.finish_line(batch_id, i, "completed", ok(batch_id, i))
    await stack.app.db.execute("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = $1",
                               batch_id)
    await stack.worker.finalize_due()
    done = await stack.repo.get(None, batch_id)
    assert done.status == "expired" and done.expired_at is not None
    assert (done.total, done.completed, done.failed) == (7, 2, 5)
    assert [o["custom_id"] for o in await content(stack, done.output_file_id)] == ["c0", "c2"]
    codes = [e["error"]["code"] for e in await content(stack, done.error_file_id)]
    assert codes.count("batch_expired") == 4 and codes.count("duplicate_custom_id") == 1


async def test_cancel_waits_for_running_lines(stack: Stack) -> None:
    batch_id = await started(stack, 4)
    assert [ln.line_index for ln in await stack.repo.chunk_lines(batch_id, 0)] == [0, 1, 2, 3]  # now running
    assert (await stack.repo.cancel("owner-1", batch_id)).status == "cancelling"
    await stack.worker.finalize_due()
    assert (await stack.repo.get(None, batch_id)).status == "cancelling"  # lines 0..3 are running
    assert await stack.repo.finish_line(batch_id, 1, "completed", ok(batch_id, 1))  # an in-flight line lands
    await stack.app.db.execute("UPDATE batch_lines SET started_at = now() - interval '1 minute'")  # workers gone
    await stack.worker.finalize_due()
    done = await stack.repo.get(None, batch_id)
    assert done.status == "cancelled" and (done.completed, done.failed) == (1, 4)
    assert [o["custom_id"] for o in await content(stack, done.output_file_id)] == ["c1"]
    assert (await stack.repo.cancel("owner-1", batch_id)).status == "cancelled"  # unchanged, refused upstream
    assert await stack.repo.cancel("someone-else", batch_id) is None


async def test_a_unit_that_keeps_killing_workers_fails_its_lines(stack: Stack) -> None:
    batch_id = await started(stack, 6)
    await stack.repo.finish_line(batch_id, 0, "completed", ok(batch_id, 0))
    await stack.worker.give_up(batch_id, 0)  # lines 1..3 of unit 0 fail; unit 1 is untouched
    row = await stack.repo.get(None, batch_id)
    assert (row.completed, row.failed) == (1, 1 + 3)
    for i in (4, 5):
        await stack.repo.finish_line(batch_id, i, "completed", ok(batch_id, i))
    await stack.worker.finalize_due()
    done = await stack.repo.get(None, batch_id)
    assert done.status == "completed" and (done.completed, done.failed) == (3, 4)
    codes = [e["error"]["code"] for e in await content(stack, done.error_file_id)]
    assert sorted(codes) == ["duplicate_custom_id"] + ["server_error"] * 3
