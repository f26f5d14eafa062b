"""Export jobs on workers (docs/files.md "Export jobs"): real `python -m services.files.worker` processes on the real
Postgres and Redis. A worker SIGKILLed mid-job loses it to the other, which completes it once; a cancelled job
stops its worker and ends "cancelled"."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import pathlib
import random
import signal
import sys
import time
import uuid
import zipfile
from collections.abc import AsyncIterator

import pytest

from llmlab.devstack import free_port
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.files.app import SPEC, open_deps
from services.files.exports.jobs import GROUP, QUEUE, ExportJobs, result_key
from services.files.exports.tables import Export
from services.files.repository import ExportRow
from services.files.settings import FilesSettings

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLAIM_IDLE_MS = 1500
OWNER = "user-1"
# Enough responses that rendering an XLSX takes seconds on this machine, so a worker can be killed mid-job.
RESPONSES = 24_000


class Worker:
    """One worker process and its output."""

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
async def setup(database_url, redis_url, schema, redis_prefix, tmp_path) -> AsyncIterator[dict]:
    """The files service's side in-process (its migrations, ExportJobs on the queue) and a way to start workers."""
    settings = load_settings(FilesSettings, "files", environ={}, port=0, database_url=database_url,
                             redis_url=redis_url, db_schema=schema, redis_prefix=redis_prefix,
                             data_dir=str(tmp_path), shutdown_grace_seconds=1.0,
                             export_claim_idle_ms=CLAIM_IDLE_MS)
    app = ServiceApp(SPEC, settings)
    await app.start()
    deps = await open_deps(app)
    jobs = ExportJobs(deps, app.channel("inference"), app.events)
    workers: list[Worker] = []
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
        "PYTHONUNBUFFERED": "1",
        "LLMLAB_DATABASE_URL": database_url, "LLMLAB_REDIS_URL": redis_url,
        "LLMLAB_FILES_DB_SCHEMA": schema, "LLMLAB_REDIS_PREFIX": redis_prefix,
        "LLMLAB_FILES_DATA_DIR": str(tmp_path), "LLMLAB_FILES_EXPORT_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
        "LLMLAB_FILES_WORKER_PORT": "0", "LLMLAB_LOG_FORMAT": "json", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "1",
        # Nobody listens there: the record then names the model facts unknown, at once.
        "LLMLAB_INFERENCE_TARGET": f"127.0.0.1:{free_port()}",
    }

    async def start_worker() -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.files.worker", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        w = Worker(proc)
        workers.append(w)
        await w.ready()
        return w

    try:
        yield {"app": app, "deps": deps, "jobs": jobs, "start_worker": start_worker, "root": tmp_path / "files"}
    finally:
        for w in workers:
            await w.stop()
        await app.stop()


def big_export(n: int) -> Export:
    rng = random.Random(7)
    responses = [{"id": str(uuid.UUID(int=i + 1)), "content": f"Response {i}, with a comma and \"quotes\" " * 4,
                  "response_time": rng.randint(100, 900), "token_count": 40, "cost": 0.0001,
                  "quality_metrics": {"coherence": rng.uniform(60, 95), "overall_quality": rng.uniform(60, 95)}}
                 for i in range(n)]
    exp = {"id": 1, "name": "Large", "model": "smollm2-135m-instruct", "parameters": {"temperature": 0.7},
           "responses": responses}
    return Export("experiment", "Experiment 1: Large", [exp])


async def wait_for(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def stored(root: pathlib.Path, export_id: str) -> list[pathlib.Path]:
    folder = root / "exports" / uuid.UUID(export_id).hex
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


async def pending(app: ServiceApp, prefix: str) -> int:
    assert app.redis is not None
    return int((await app.redis.xpending(f"{prefix}:stream:{QUEUE}", GROUP))["pending"])


async def acked(app: ServiceApp, prefix: str) -> bool:
    """The job's message was acked: its handler returned (after deleting the staged input)."""
    return await pending(app, prefix) == 0


async def started(jobs: ExportJobs, export_id: str) -> ExportRow | None:
    """The job once a worker holds it and is rendering (its record built)."""
    row = await jobs.get(None, export_id)
    assert row is not None
    return row if row.worker and row.progress >= 20 and row.status == "running" else None


async def test_a_killed_worker_s_job_is_completed_once_by_another(setup, redis_prefix):
    jobs: ExportJobs = setup["jobs"]
    a, b = await setup["start_worker"](), await setup["start_worker"]()
    by_pid = {a.proc.pid: a, b.proc.pid: b}
    row = await jobs.start(OWNER, big_export(RESPONSES), "xlsx", "experiment_1", {"format": "xlsx"})
    assert row.status == "running" and row.progress == 5

    holding = await wait_for(lambda: started(jobs, row.id), 60, "a worker to start rendering")
    assert holding.attempt == 1
    victim = by_pid[int(holding.worker.rsplit("-", 1)[1])]
    survivor = b if victim is a else a
    victim.proc.send_signal(signal.SIGKILL)
    assert await victim.proc.wait() == -signal.SIGKILL
    assert (await jobs.get(None, row.id)).status == "running"  # type: ignore[union-attr]

    seen: list[int] = []

    async def done() -> ExportRow | None:
        r = await jobs.get(None, row.id)
        assert r is not None
        seen.append(r.progress)
        return r if r.status != "running" else None

    final = await wait_for(done, 120, "the other worker to complete the job")
    assert final.status == "completed" and final.progress == 100, final
    assert seen == sorted(seen)  # progress never went backwards across the takeover
    assert final.attempt == 2 and final.worker and final.worker.endswith(f"-{survivor.proc.pid}")
    assert final.blob_key == result_key(row.id, 2, row.filename)
    deps = setup["deps"]
    await wait_for(lambda: acked(setup["app"], redis_prefix), 30, "the message to be acked")
    db = setup["app"].db
    completed_at = await db.fetchval("SELECT completed_at FROM exports WHERE id = $1", uuid.UUID(row.id))
    transfer_key = await db.fetchval("SELECT blob_key FROM transfers WHERE token = $1", row.token)
    assert completed_at is not None and transfer_key == final.blob_key
    # Exactly one object: the completing attempt's result (the staged input is gone, the killed one wrote none).
    files = stored(setup["root"], row.id)
    assert [p.relative_to(setup["root"]).as_posix() for p in files] == [final.blob_key], files
    with zipfile.ZipFile(io.BytesIO(files[0].read_bytes())) as z:
        assert any(n.startswith("xl/charts/chart") for n in z.namelist())
    # A late finisher of the first attempt changes nothing.
    assert not await deps.repo.complete_export(row.id, 1, result_key(row.id, 1, row.filename), 1)
    assert (await jobs.get(None, row.id)).blob_key == final.blob_key  # type: ignore[union-attr]
    assert survivor.proc.returncode is None


async def test_a_cancelled_job_stops_its_worker_and_ends_cancelled(setup, redis_prefix):
    jobs: ExportJobs = setup["jobs"]
    worker = await setup["start_worker"]()
    row = await jobs.start(OWNER, big_export(RESPONSES), "xlsx", "experiment_1", {"format": "xlsx"})
    await wait_for(lambda: started(jobs, row.id), 60, "the worker to start rendering")
    assert await jobs.cancel("someone-else", row.id) is None  # another user's job is not found
    cancelled = await jobs.cancel(OWNER, row.id)
    assert cancelled is not None and cancelled.status == "cancelled"

    await wait_for(lambda: acked(setup["app"], redis_prefix), 30, "the worker to give the job up")
    final = await jobs.get(None, row.id)
    assert final is not None and final.status == "cancelled" and final.blob_key is None
    assert stored(setup["root"], row.id) == []  # no result, and the staged input is deleted

    async def logged() -> bool:
        return any('"export job stopped"' in line for line in worker.lines)

    await wait_for(logged, 10, "the worker to log that it stopped")
    assert worker.proc.returncode is None
    # Cancelling an ended job changes nothing.
    assert (await jobs.cancel(OWNER, row.id)).status == "cancelled"  # type: ignore[union-attr]
