"""The training worker for real (docs/training.md "Pause, resume, kill -9"): worker processes
(`python -m services.inference.training.worker`) on the real Postgres and Redis beside an in-process inference and
files service. A worker SIGKILLed mid-job takes its trainer with it; a second worker reclaims the job and continues
from the last checkpoint; every step is trained once and the fine-tuned model ends up registered and served."""

from __future__ import annotations

import asyncio
import os
import pathlib
import shutil
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.inference.v1 import training_service_pb2 as pb
from llmlab.inference.v1 import training_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.files.app import SPEC as FILES_SPEC
from services.files.settings import FilesSettings
from services.inference.app import SPEC
from services.inference.artifacts import default_cache_dir, find_cached
from services.inference.settings import InferenceSettings
from services.inference.training.repository import TrainingRepository
from tests.conftest import delete_keys, drop_schemas

pytestmark = [pytest.mark.integration, pytest.mark.training]

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLAIM_IDLE_MS = 3000
EMBEDDED = "smollm2-135m-instruct"


class Worker:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc, self.lines = proc, []
        self.drain: asyncio.Task | None = None

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode()
            assert line, f"worker exited: {''.join(self.lines)}"
            self.lines.append(line)
            if line.startswith("LLMLAB_READY"):
                break
        self.drain = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())


@pytest.fixture
async def stack(database_url, redis_url, tmp_path) -> AsyncIterator[dict]:
    if find_cached(EMBEDDED) is None:
        pytest.skip(f"the embedded model {EMBEDDED} is not imported")
    run = uuid.uuid4().hex[:12]
    schema, prefix = f"t_{run}", f"t{run}"
    common = dict(environ={}, port=0, database_url=database_url, redis_url=redis_url, redis_prefix=prefix,
                  shutdown_grace_seconds=1.0)
    settings = load_settings(InferenceSettings, SPEC.name, db_schema=schema, max_batch=4, **common)
    inference = ServiceApp(SPEC, settings)
    files = ServiceApp(FILES_SPEC, load_settings(FilesSettings, "files", db_schema=f"{schema}_files",
                                                 data_dir=str(tmp_path), **common))
    await inference.start()
    await files.start()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
           "PYTHONUNBUFFERED": "1", "LLMLAB_DATABASE_URL": database_url, "LLMLAB_REDIS_URL": redis_url,
           "LLMLAB_INFERENCE_DB_SCHEMA": schema, "LLMLAB_REDIS_PREFIX": prefix,
           "LLMLAB_INFERENCE_TRAINING_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
           "LLMLAB_INFERENCE_TRAINING_CHECKPOINT_EVERY": "3", "LLMLAB_INFERENCE_TRAINING_LOG_EVERY": "1",
           "LLMLAB_INFERENCE_TARGET": f"127.0.0.1:{inference.port}", "LLMLAB_FILES_TARGET": f"127.0.0.1:{files.port}",
           "LLMLAB_TRAINING_WORKER_PORT": "0", "LLMLAB_LOG_FORMAT": "json", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "1"}
    workers: list[Worker] = []

    async def start_worker() -> Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.inference.training.worker", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        w = Worker(proc)
        workers.append(w)
        await w.ready()
        return w

    channel = grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}")
    try:
        yield {"stub": pb_grpc.TrainingServiceStub(channel), "start_worker": start_worker, "settings": settings,
               "generate": inf_grpc.InferenceServiceStub(channel).Generate,
               "repo": TrainingRepository(inference.db)}
    finally:
        for w in workers:
            if w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        await channel.close()
        await files.stop()
        await inference.stop()
        await drop_schemas(database_url, schema)
        await delete_keys(redis_url, prefix)


def trainer_pids(job_dir: str) -> list[int]:
    pids = []
    for p in pathlib.Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if job_dir in (p / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(p.name))
            except OSError:
                continue
    return pids


@pytest.mark.timeout(900)  # a fresh machine also creates the training venv and base checkpoint
async def test_a_worker_killed_mid_job_is_replaced_and_the_job_resumes_from_its_checkpoint(stack) -> None:
    first = await stack["start_worker"]()
    created = await stack["stub"].CreateTrainingJob(pb.CreateTrainingJobRequest(
        model_id=EMBEDDED, job_name="kill -9", epochs=2, batch_size=4, lora_r=2, lora_alpha=4, learning_rate=1e-3))
    job_id = created.data.id
    repo: TrainingRepository = stack["repo"]
    row = await repo.get(job_id)
    assert row is not None
    job_dir = str(default_cache_dir() / ".training" / row.public_id)
    checkpoint = pathlib.Path(job_dir) / "out" / "checkpoint" / "position.json"
    deadline = time.monotonic() + 300
    while not (checkpoint.exists() and (await repo.get(job_id)).step >= 4):  # type: ignore[union-attr]
        assert time.monotonic() < deadline and first.proc.returncode is None, "".join(first.lines[-20:])
        await asyncio.sleep(0.2)
    assert trainer_pids(job_dir)
    first.proc.send_signal(signal.SIGKILL)
    await first.proc.wait()
    for _ in range(50):  # the trainer dies with its worker (PR_SET_PDEATHSIG)
        if not trainer_pids(job_dir):
            break
        await asyncio.sleep(0.1)
    assert not trainer_pids(job_dir)
    killed_at = (await repo.get(job_id)).step  # type: ignore[union-attr]

    await stack["start_worker"]()
    while (row := await repo.get(job_id)).status not in ("succeeded", "failed"):  # type: ignore[union-attr]
        assert time.monotonic() < deadline + 300, row
        await asyncio.sleep(0.5)
    try:
        assert row.status == "succeeded", row.error
        assert "resumed from checkpoint at step" in row.logs and row.attempt == 2
        resumed_from = int(row.logs.split("resumed from checkpoint at step ")[1].split(":")[0])
        assert 3 <= resumed_from <= killed_at and resumed_from % 3 == 0
        # Every step once in the loss curve, nothing lost or doubled.
        assert [p["step"] for p in row.metrics] == list(range(1, 13))
        assert row.fine_tuned_model
        reply = await stack["generate"](inf.GenerateRequest(
            model=row.fine_tuned_model, messages=[inf.ChatMessage(role="user", content="What is LoRA?")],
            sampling=inf.SamplingParams(temperature=0.0, max_tokens=8)))
        assert reply.model == row.fine_tuned_model and reply.choices[0].text
        # A replica started later serves the fine-tuned model too.
        replica = ServiceApp(SPEC, stack["settings"])
        await replica.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{replica.port}") as ch:
                reply = None
                for _ in range(100):
                    try:
                        reply = await inf_grpc.InferenceServiceStub(ch).Generate(inf.GenerateRequest(
                            model=row.fine_tuned_model, messages=[inf.ChatMessage(role="user", content="Hi")],
                            sampling=inf.SamplingParams(temperature=0.0, max_tokens=4)))
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.2)
                assert reply is not None and reply.model == row.fine_tuned_model and reply.choices[0].text
        finally:
            await replica.stop()
        assert row.result_files
    finally:
        if row.fine_tuned_model:
            shutil.rmtree(default_cache_dir() / row.fine_tuned_model, ignore_errors=True)
