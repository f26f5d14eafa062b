"""Starting, pausing, resuming and cancelling training jobs: the service's side of the job queue (docs/training.md).

A job is a row (repository.py) plus a message on the `inference.training` stream that a training worker
(`python -m services.inference.training.worker`) consumes. The training data is checked and staged into the row at
creation, so any worker can run the job and a bad file is refused before anything is queued."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from llmlab.chat_jsonl import read_file
from llmlab.runtime import FailedPrecondition, InvalidArgument, NotFound, Unavailable, validation_error
from llmlab.runtime.streams import EventPublisher

from ..importer.catalogue import CATALOGUE
from ..models.registry import ModelRegistry, refuse_nul
from . import domain
from .repository import JobRow, NewJob, TrainingRepository

log = structlog.get_logger(__name__)

QUEUE = "inference.training"
GROUP = "training-workers"
EVENT = "training.requested"
# Domain events for analytics and webhooks (docs/training.md): fine_tuning.job.created / completed / failed /
# cancelled, each with the job's ids.
EVENTS_STREAM = "training"


@dataclass
class JobSpec:
    """What a caller asked for, already resolved to numbers (each family fills it from its own request)."""

    family: str
    owner_id: str
    model_id: str
    job_name: str
    epochs: int
    learning_rate: float
    batch_size: int
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    seed: int | None = None
    suffix: str | None = None
    training_file: str | None = None
    validation_file: str | None = None


def conflict(message: str, status: str) -> FailedPrecondition:
    """A transition the job's state does not allow: 409 (docs/api.md)."""
    return FailedPrecondition(message, reason="CONFLICT", http_status=409, details={"status": status})


class TrainingJobs:
    def __init__(self, repo: TrainingRepository, registry: ModelRegistry, queue: EventPublisher | None,
                 files: grpc.aio.Channel | None) -> None:
        self.repo = repo
        self._registry = registry
        self._queue = queue
        self._files = files

    async def _read_file(self, file_id: str, field: str) -> str:
        if self._files is None:
            raise Unavailable("The files service is not reachable from the inference service")
        return await read_file(self._files, file_id, field)

    async def create(self, spec: JobSpec) -> JobRow:
        for field in ("model_id", "training_file", "validation_file", "suffix"):
            refuse_nul("model" if field == "model_id" and spec.family == "openai" else field, getattr(spec, field))
        record = await self._registry.find(spec.model_id)
        if record is None:
            raise NotFound(f"Model '{spec.model_id}' not found", reason="MODEL_NOT_FOUND",
                           details={"field": "model", "value": spec.model_id})
        if record.id not in CATALOGUE:
            raise validation_error("model", spec.model_id, "must be a model with local trainable weights: "
                                   + ", ".join(sorted(CATALOGUE)))
        for name in ("epochs", "learning_rate", "batch_size", "lora_r", "lora_alpha", "lora_dropout"):
            domain.check_range(name, getattr(spec, name))
        note = None
        if spec.training_file:
            train = domain.parse_examples(await self._read_file(spec.training_file, "training_file"),
                                          "training_file")
        else:
            train, note = domain.builtin_examples(), domain.BUILTIN_NOTE
        valid = None
        if spec.validation_file:
            valid = domain.parse_examples(await self._read_file(spec.validation_file, "validation_file"),
                                          "validation_file")
        public_id = "ftjob-" + secrets.token_hex(12)
        row = await self.repo.insert(NewJob(
            public_id=public_id, family=spec.family, owner_id=spec.owner_id, model_id=record.id,
            job_name=spec.job_name, status="queued" if spec.family == "openai" else "pending",
            epochs=spec.epochs, learning_rate=spec.learning_rate, batch_size=spec.batch_size, lora_r=spec.lora_r,
            lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
            seed=spec.seed if spec.seed is not None else secrets.randbelow(2**31 - 1),
            max_length=domain.MAX_LENGTH, suffix=spec.suffix, training_file=spec.training_file,
            validation_file=spec.validation_file, training_data=train.jsonl,
            validation_data=valid.jsonl if valid else None,
        ))  # fmt: skip
        await self.repo.add_event(row.id, f"Created fine-tuning job: {public_id}")
        if note:
            await self.repo.add_event(row.id, note)
        await self.repo.add_event(row.id, f"Validated training file: {train.count} examples"
                                  + (f", validation file: {valid.count} examples" if valid else ""))
        # The answer describes the job as created: read before it is queued, since a worker may take it at once.
        created = await self.repo.get(row.id)
        await self._enqueue(row)
        await self._event("fine_tuning.job.created", row)
        return created  # type: ignore[return-value]

    async def _event(self, kind: str, row: JobRow) -> None:
        if self._queue is None:
            return
        try:
            await self._queue.publish(EVENTS_STREAM, kind, {"job_id": row.public_id, "training_job": row.id,
                                                            "model": row.model_id, "family": row.family,
                                                            "owner_id": row.owner_id})
        except Exception:
            log.warning("training event not published", kind=kind, job_id=row.id)

    async def _enqueue(self, row: JobRow) -> None:
        if self._queue is None:
            raise Unavailable("The training queue is not configured")
        try:
            await self._queue.publish(QUEUE, EVENT, {"job_id": row.id})
        except Exception:
            log.exception("training job could not be queued", job_id=row.id)
            await self.repo.transition(row.id, domain.CANCELLABLE, "failed", finished=True)
            raise Unavailable("The training queue is unavailable; try again shortly") from None

    async def get(self, job_id: int) -> JobRow:
        row = await self.repo.get(job_id)
        if row is None:
            raise NotFound(f"Training job {job_id} not found", reason="TRAINING_JOB_NOT_FOUND")
        return row

    async def pause(self, job_id: int) -> JobRow:
        """A RUNNING job becomes PAUSED now; its worker sees it within a second, checkpoints and stops."""
        row = await self.get(job_id)
        done = await self.repo.transition(job_id, domain.PAUSABLE, "paused")
        if done is None:
            raise conflict(f"Training job {job_id} is {domain.LAB_STATUS[row.status]}; only a RUNNING job can be "
                           "paused", domain.LAB_STATUS[row.status])
        await self.repo.add_event(job_id, f"Pause requested at step {row.step}")
        return done

    async def resume(self, job_id: int) -> JobRow:
        """A PAUSED job is RUNNING again and requeued; a worker continues it from its checkpoint."""
        row = await self.get(job_id)
        done = await self.repo.transition(job_id, domain.RESUMABLE, "running")
        if done is None:
            raise conflict(f"Training job {job_id} is {domain.LAB_STATUS[row.status]}; only a PAUSED job can be "
                           "resumed", domain.LAB_STATUS[row.status])
        await self.repo.add_event(job_id, f"Resumed from step {row.step}")
        await self._enqueue(done)
        return done

    async def cancel(self, row: JobRow) -> JobRow | None:
        """Cancel an unfinished job (its worker stops the trainer within a second); None when already finished."""
        done = await self.repo.transition(row.id, domain.CANCELLABLE, "cancelled", finished=True)
        if done is not None:
            await self.repo.add_event(row.id, "Fine-tuning job cancelled")
            await self._event("fine_tuning.job.cancelled", done)
        return done


def resolve_hyper(value: Any, name: str, default: Any, kind: type, field: str | None = None) -> Any:
    """An OpenAI hyperparameter (`field`, e.g. hyperparameters.n_epochs): absent or "auto" -> the default; else a
    number of `kind`, in the range of `name`."""
    field = field or f"hyperparameters.{name}"
    if value is None or value == "auto":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and value != int(value)):
        raise InvalidArgument(f"{field} must be 'auto' or a {'integer' if kind is int else 'number'}",
                              reason="invalid_value", details={"field": field, "value": value},
                              field_violations=[(field, "must be 'auto' or a number")])
    return domain.check_range(name, kind(value), field)
