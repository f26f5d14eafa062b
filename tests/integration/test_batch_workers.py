"""Batches on real workers (docs/batches.md): the inference and files services in-process on the real model, two
`python -m services.inference.worker` processes on the real Postgres and Redis. One worker is SIGKILLed while it
holds a chunk; the batch still completes with every line exactly once in the output file and in the usage ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from llmlab.files.v1 import files_service_pb2 as files_pb
from llmlab.files.v1 import files_service_pb2_grpc as files_grpc
from llmlab.inference.v1 import batch_service_pb2 as pb
from llmlab.inference.v1 import batch_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from llmlab.runtime.streams import stream_key
from services.inference.artifacts import default_cache_dir
from services.inference.batches.jobs import GROUP, QUEUE

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLAIM_IDLE_MS = 2000
OWNER = "user:batch-owner"
LINES = 32


def require_model() -> None:
    if not (default_cache_dir() / "smollm2-135m-instruct" / "model.onnx").exists():
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail("no converted model")
        pytest.skip("no converted model")


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode()
            assert line, f"worker exited: {''.join(self.lines)}"
            self.lines.append(line)
            if line.startswith("LLMLAB_READY"):
                break
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)


@pytest.fixture
async def stack(database_url, redis_url, schema, redis_prefix, tmp_path, monkeypatch) -> AsyncIterator[dict]:
    require_model()
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
    inference = ServiceApp(INFERENCE, load_settings(InferenceSettings, "inference", db_schema=f"{schema}_inf",
                                                    max_batch=8, **common))
    await inference.start()
    workers: list[Worker] = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
        "PYTHONUNBUFFERED": "1",
        "LLMLAB_DATABASE_URL": database_url, "LLMLAB_REDIS_URL": redis_url, "LLMLAB_REDIS_PREFIX": redis_prefix,
        "LLMLAB_INFERENCE_DB_SCHEMA": f"{schema}_inf", "LLMLAB_INFERENCE_WORKER_PORT": "0",
        "LLMLAB_INFERENCE_TARGET": f"127.0.0.1:{inference.port}", "LLMLAB_FILES_TARGET": f"127.0.0.1:{files.port}",
        "LLMLAB_INFERENCE_BATCH_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS), "LLMLAB_INFERENCE_BATCH_CHUNK_LINES": "4",
        "LLMLAB_INFERENCE_BATCH_CONSUMERS": "2", "LLMLAB_LOG_FORMAT": "json", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "1",
    }

    async def start_worker() -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.inference.worker", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        w = Worker(proc)
        workers.append(w)
        await w.ready()
        return w

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as ch, \
                grpc.aio.insecure_channel(f"127.0.0.1:{files.port}") as fch:
            yield {"batches": pb_grpc.BatchServiceStub(ch), "files": files_grpc.FileServiceStub(fch),
                   "start_worker": start_worker, "redis": inference.redis, "prefix": redis_prefix}
    finally:
        for w in workers:
            await w.stop()
        await inference.stop()
        await files.stop()


MD = (("x-llmlab-principal", OWNER),)


async def test_killed_worker_loses_nothing_and_doubles_nothing(stack) -> None:
    rows = [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": "smollm2-135m-instruct", "max_tokens": 24, "temperature": 0,
                      "messages": [{"role": "user", "content": f"Write a sentence about the number {i}."}]}}
            for i in range(LINES)]
    stored = await stack["files"].StoreFile(files_pb.StoreFileRequest(
        owner_id="batch-owner", filename="in.jsonl", purpose="batch", content_type="application/jsonl",
        content=b"".join(json.dumps(r).encode() + b"\n" for r in rows)))
    batch = await stack["batches"].CreateBatch(pb.CreateBatchRequest(
        input_file_id=stored.file.id, endpoint="/v1/chat/completions", completion_window="24h"), metadata=MD)
    victim = await stack["start_worker"]()
    redis, key = stack["redis"], stream_key(stack["prefix"], QUEUE)

    # wait until the victim is running a chunk with some lines already written, then SIGKILL it
    deadline = time.monotonic() + 120
    held = []
    while time.monotonic() < deadline:
        b = await stack["batches"].GetBatch(pb.GetBatchRequest(batch_id=batch.id), metadata=MD)
        pending = await redis.xpending_range(key, GROUP, "-", "+", 50)
        held = [p for p in pending if str(victim.proc.pid) in (p["consumer"].decode()
                                                               if isinstance(p["consumer"], bytes)
                                                               else p["consumer"])]
        if b.request_counts.completed >= 4 and held:
            break
        await asyncio.sleep(0.05)
    assert held, "the worker never held a chunk"
    victim.proc.send_signal(signal.SIGKILL)
    await victim.proc.wait()
    at_kill = (await stack["batches"].GetBatch(pb.GetBatchRequest(batch_id=batch.id), metadata=MD)).request_counts
    assert at_kill.completed < LINES

    await stack["start_worker"]()  # the survivor reclaims the dead worker's chunks after CLAIM_IDLE_MS
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        b = await stack["batches"].GetBatch(pb.GetBatchRequest(batch_id=batch.id), metadata=MD)
        if b.status in ("completed", "failed", "expired", "cancelled"):
            break
        await asyncio.sleep(0.2)
    assert b.status == "completed", b
    assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (LINES, LINES, 0)
    assert b.error_file_id.WhichOneof("kind") == "null_value"

    content = bytearray()
    async for chunk in stack["files"].GetFileContent(
            files_pb.GetFileContentRequest(file_id=b.output_file_id.string_value), metadata=MD):
        content += chunk.data
    out = [json.loads(line) for line in content.decode().splitlines()]
    assert sorted(o["custom_id"] for o in out) == sorted(r["custom_id"] for r in rows)  # each line exactly once
    assert all(o["response"]["status_code"] == 200 and o["error"] is None for o in out)

    # the usage ledger saw every line, under the line's own request id (counted once however often it ran)
    events = await redis.xrange(stream_key(stack["prefix"], "usage"))
    ids = [json.loads(f[b"data"])["request_id"] for _, f in events]
    line_ids = {o["response"]["request_id"] for o in out}
    assert line_ids <= set(ids)
    principals = {json.loads(f[b"data"])["principal"] for _, f in events}
    assert principals == {OWNER}
