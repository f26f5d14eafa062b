"""Training workers: python -m services.inference.training.worker — consume the `inference.training` queue
(jobs.py) with the inference service's settings and schema; serve gRPC health on LLMLAB_TRAINING_WORKER_PORT.

One job at a time per worker. The worker claims the job's row (a new attempt), writes the staged data and a
config into `<cache>/.training/<job>/`, and runs trainer.py in the training venv as a subprocess, storing the
JSON lines it prints as the job's progress, loss, logs and events. Every second it renews its claim on the row and
on the queue message; when it finds the job PAUSED or CANCELLED it sends the trainer SIGTERM (the trainer
checkpoints at the next step and exits), or when another worker has taken the job over, kills it. A worker killed
with -9 takes its trainer with it (PR_SET_PDEATHSIG); after `training_claim_idle_ms` another worker (or this one
restarted) reclaims the message and the trainer continues from the last periodic checkpoint. A finished job is
merged, exported and served (publish.py, loop.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import time
from typing import Any

import structlog

from llmlab.runtime import ServiceApp, ServiceSpec
from llmlab.runtime.server import main as run_service
from llmlab.runtime.streams import StreamConsumer, StreamMessage

from ..app import SPEC
from ..artifacts import default_cache_dir
from ..models.registry import ModelRegistry
from ..settings import InferenceSettings
from . import trainer
from .jobs import EVENTS_STREAM, GROUP, QUEUE
from .loop import publish_job
from .publish import base_checkpoint
from .repository import JobRow, TrainingRepository
from .train_venv import ensure_train_venv

log = structlog.get_logger(__name__)

TRAINER = pathlib.Path(trainer.__file__)
HEARTBEAT_S = 1.0


class TrainingFailed(Exception):
    """The job cannot succeed (the trainer failed, the export failed): the job fails with this message."""

    def __init__(self, message: str, code: str = "training_failed") -> None:
        super().__init__(message)
        self.code = code


class Run:
    """One attempt's trainer subprocess and the figures it has reported."""

    def __init__(self, repo: TrainingRepository, row: JobRow, log_every: int) -> None:
        self.repo, self.row, self.log_every = repo, row, log_every
        self.values: dict[str, Any] = {}
        self.done: dict[str, Any] | None = None
        self.error: str | None = None
        self.paused_at: int | None = None
        self.status: str | None = row.status

    async def on_line(self, line: str) -> None:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            return
        kind, row = ev.get("event"), self.row
        if kind == "start":
            self.values["total_steps"] = ev["total_steps"]
            what = f"resumed from checkpoint at step {ev['step']}" if ev["resumed"] else "started"
            await self.repo.add_event(row.id, f"Training {what}: {ev['examples']} examples, {ev['total_steps']} "
                                      f"steps on {ev['device']} ({ev['trainable_parameters']:,} LoRA parameters)")
        elif kind == "step":
            total = max(ev["total_steps"], 1)
            self.values.update(step=ev["step"], current_loss=ev["loss"], current_epoch=ev["epoch"],
                               progress=min(99.0, 100.0 * ev["step"] / total), trained_tokens=ev["tokens"])
            if ev["step"] % self.log_every == 0:
                await self.repo.add_event(row.id, f"Step {ev['step']}/{total}: training loss={ev['loss']:.4f}",
                                          type="metrics", log=True,
                                          data={"step": ev["step"], "train_loss": ev["loss"]})
        elif kind == "epoch":
            valid = f", validation loss {ev['valid_loss']:.4f}" if ev.get("valid_loss") is not None else ""
            await self.repo.add_event(row.id, f"Epoch {ev['epoch']}/{ev['epochs']} completed with loss "
                                      f"{ev['loss']:.4f}{valid}")
        elif kind == "paused":
            self.paused_at = ev.get("step")
        elif kind == "done":
            self.done = ev
        elif kind == "error":
            self.error = ev.get("message")


class TrainingWorker:
    def __init__(self, app: ServiceApp, name: str) -> None:
        assert app.db is not None and app.redis is not None
        settings = app.settings
        assert isinstance(settings, InferenceSettings)
        self.app, self.s, self.name = app, settings, name
        self.repo = TrainingRepository(app.db)
        self.registry = ModelRegistry(app.db)
        self.cache = pathlib.Path(settings.model_cache).expanduser() if settings.model_cache else default_cache_dir()
        self.consumer = StreamConsumer(app.redis, settings.redis_prefix, QUEUE, GROUP, name, self.handle, batch=1,
                                       claim_idle_ms=settings.training_claim_idle_ms,
                                       max_deliveries=settings.training_max_deliveries)

    def workdir(self, row: JobRow) -> pathlib.Path:
        return self.cache / ".training" / row.public_id

    async def _claim(self, job_id: int) -> JobRow | None:
        """The job, claimed; None when it is not active any more. A job still held by a live worker (paused and
        resumed before that worker's trainer stopped) is waited for."""
        stale_s = self.s.training_claim_idle_ms / 1000
        deadline = time.monotonic() + stale_s + 10
        while True:
            row = await self.repo.claim(job_id, self.name, stale_s)
            if row is not None:
                return row
            current = await self.repo.get(job_id)
            if current is None or current.status not in ("pending", "validating_files", "queued", "running"):
                return None
            if time.monotonic() > deadline:
                raise RuntimeError(f"training job {job_id} is still held by {current.worker}")
            await asyncio.sleep(1.0)

    async def handle(self, msg: StreamMessage) -> None:
        job_id = int(msg.data.get("job_id", 0))
        row = await self._claim(job_id)
        if row is None:
            return
        log.info("training job claimed", job_id=job_id, attempt=row.attempt, deliveries=msg.deliveries)
        if msg.deliveries > self.s.training_max_deliveries:
            await self._fail(row, "too many attempts: the workers running this job kept dying")
            return
        try:
            await self.run(row, lambda: self.consumer.touch(msg.id))
        except TrainingFailed as exc:
            log.warning("training job failed", job_id=job_id, error=str(exc))
            await self._fail(row, str(exc), exc.code)

    async def _fail(self, row: JobRow, message: str, code: str = "training_failed") -> None:
        error = {"code": code, "message": message, "param": None}
        if await self.repo.finish(row.id, row.attempt, "failed", error=error):
            await self.repo.add_event(row.id, f"Fine-tuning job failed: {message}", level="error")
            await self.app.events.publish(EVENTS_STREAM, "fine_tuning.job.failed",  # type: ignore
                                          {"job_id": row.public_id, "error": error})
            shutil.rmtree(self.workdir(row), ignore_errors=True)

    async def run(self, row: JobRow, renew: Any) -> None:
        work = self.workdir(row)
        work.mkdir(parents=True, exist_ok=True)
        train, valid = await self.repo.data(row.id)
        (work / "train.jsonl").write_text(train)
        if valid:
            (work / "valid.jsonl").write_text(valid)
        try:
            # First use on a machine: about 30 s for the checkpoint, 45 s for the venv; logged as they go.
            base = await asyncio.to_thread(base_checkpoint, row.model_id, self.cache, self._toolchain_progress)
            python = await asyncio.to_thread(ensure_train_venv, self.cache, self._toolchain_progress)
        except Exception as exc:
            raise TrainingFailed(f"the training toolchain is unavailable: {exc}", "toolchain_unavailable") from exc
        cfg = trainer.Config(
            base_dir=str(base), train_file=str(work / "train.jsonl"), out_dir=str(work / "out"),
            validation_file=str(work / "valid.jsonl") if valid else None, epochs=row.epochs,
            batch_size=row.batch_size, learning_rate=row.learning_rate, lora_r=row.lora_r, lora_alpha=row.lora_alpha,
            lora_dropout=row.lora_dropout, seed=row.seed, max_length=row.max_length,
            checkpoint_every=self.s.training_checkpoint_every, threads=self.s.training_threads,
            log_every=self.s.training_log_every, device="cuda" if self.s.device == "cuda" else "auto",
        )  # fmt: skip
        (work / "config.json").write_text(json.dumps(cfg.__dict__))
        run = Run(self.repo, row, max(self.s.training_log_every, 1))
        with (work / f"trainer-{row.attempt}.log").open("ab") as stderr:
            proc = await asyncio.create_subprocess_exec(
                str(python), str(TRAINER), str(work / "config.json"), stdout=asyncio.subprocess.PIPE,
                stderr=stderr, stdin=asyncio.subprocess.DEVNULL, limit=1 << 20)
            beat = asyncio.create_task(self._heartbeat(row, run, proc, renew))
            try:
                assert proc.stdout is not None
                async for raw in proc.stdout:
                    await run.on_line(raw.decode(errors="replace"))
                rc = await proc.wait()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat
        status = await self.repo.report(row.id, row.attempt, **run.values)
        if status is None:  # another worker holds the job now
            return
        if rc == trainer.PAUSED_EXIT:
            if status == "cancelled":
                shutil.rmtree(work, ignore_errors=True)
            elif status == "paused":
                await self.repo.add_event(row.id, f"Paused at step {run.paused_at}: checkpoint saved")
            await self.repo.release(row.id, row.attempt)
            return
        if status == "cancelled":
            shutil.rmtree(work, ignore_errors=True)
            await self.repo.release(row.id, row.attempt)
            return
        if rc != 0 or run.done is None:
            raise TrainingFailed(run.error or f"the trainer exited with status {rc}")
        await self.repo.add_event(row.id, f"Training finished: {run.done['total_steps']} steps, "
                                  f"{run.done['trained_tokens']} tokens; merging and exporting the model")
        await publish_job(self, row, run.done)

    @staticmethod
    def _toolchain_progress(line: str) -> None:
        log.info("training toolchain", progress=line.strip())

    async def _heartbeat(self, row: JobRow, run: Run, proc: asyncio.subprocess.Process, renew: Any) -> None:
        signalled = False
        while proc.returncode is None:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                status = await self.repo.report(row.id, row.attempt, **run.values)
                await renew()
            except Exception:
                log.warning("training heartbeat failed", job_id=row.id, exc_info=True)
                continue
            if status is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                return
            if status in ("paused", "cancelled") and not signalled:
                signalled = True
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)


async def setup(app: ServiceApp) -> None:
    worker = TrainingWorker(app, f"{socket.gethostname()}-{os.getpid()}")
    app.background(worker.consumer.run, "training-jobs")


WORKER_SPEC = ServiceSpec(
    name="training-worker",
    setup=setup,
    settings_cls=InferenceSettings,
    migrations=SPEC.migrations,
    uses_redis=True,
)


def main() -> None:
    """Settings are the inference service's (LLMLAB_INFERENCE_*); only the port is the worker's own."""
    run_service(WORKER_SPEC, settings_of="inference", port_env="LLMLAB_TRAINING_WORKER_PORT")


if __name__ == "__main__":
    main()

