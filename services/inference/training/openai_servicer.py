"""FineTuningService: OpenAI's `/v1/fine_tuning/jobs...` (and `/v1/fine-tuning/...`) over the same training jobs
as the lab's `/api/training` (docs/training.md): proto <-> domain only. Jobs are the caller's own."""

from __future__ import annotations

import secrets
from typing import Any

from llmlab.inference.v1 import fine_tuning_service_pb2 as pb
from llmlab.runtime import InvalidArgument, NotFound, validation_error
from llmlab.runtime.context import current_principal
from llmlab.runtime.envelope import value
from llmlab.runtime.errors import excerpt

from . import domain
from .jobs import JobSpec, TrainingJobs, resolve_hyper
from .repository import JobRow

MAX_LIMIT = 100


def _owner() -> str:
    principal = current_principal()
    return principal.user_id if principal else ""


def _unix(ts: Any) -> int:
    return int(ts.timestamp())


def openai_job(r: JobRow) -> pb.FineTuningJob:
    return pb.FineTuningJob(
        id=r.public_id, object="fine_tuning.job", model=r.model_id, created_at=_unix(r.created_at),
        finished_at=value(_unix(r.completed_at) if r.completed_at is not None else None),
        fine_tuned_model=value(r.fine_tuned_model), organization_id=r.owner_id or "org-llmlab",
        result_files=r.result_files, status=domain.OPENAI_STATUS[r.status],
        validation_file=value(r.validation_file), training_file=r.training_file or "",
        hyperparameters=pb.FineTuningHyperparameters(
            n_epochs=value(r.epochs), batch_size=value(r.batch_size),
            learning_rate_multiplier=value(round(r.learning_rate / domain.BASE_LR, 6))),
        trained_tokens=value(r.trained_tokens if r.status == "succeeded" else None),
        error=value(r.error), seed=r.seed,
    )  # fmt: skip


def _limit(request: Any) -> int:
    if not request.HasField("limit"):
        return 20
    if not 1 <= request.limit <= MAX_LIMIT:
        raise validation_error("limit", request.limit, f"must be between 1 and {MAX_LIMIT}")
    return request.limit


class FineTuningServicer:
    def __init__(self, jobs: TrainingJobs) -> None:
        self._jobs = jobs

    async def _mine(self, public_id: str) -> JobRow:
        row = await self._jobs.repo.get_public(public_id) if public_id and "\x00" not in public_id else None
        if row is None or row.family != "openai" or row.owner_id != _owner():
            raise NotFound(f"No such fine-tuning job: '{excerpt(public_id, 80)}'", reason="fine_tuning_job_not_found",
                           metadata={"param": "job_id"})
        return row

    async def CreateFineTuningJob(self, request: pb.CreateFineTuningJobRequest, context: Any) -> pb.FineTuningJob:
        if not request.model:
            raise validation_error("model", "", "is required", "Missing required parameter: 'model'")
        if not request.training_file:
            raise validation_error("training_file", "", "is required", "Missing required parameter: 'training_file'")
        hp = request.hyperparameters

        def given(name: str) -> Any:
            if not hp.HasField(name):
                return None
            v = getattr(hp, name)
            kind = v.WhichOneof("kind")
            return None if kind in (None, "null_value") else getattr(v, kind)

        epochs = resolve_hyper(given("n_epochs"), "epochs", domain.DEFAULTS["epochs"], int,
                               "hyperparameters.n_epochs")
        batch = resolve_hyper(given("batch_size"), "batch_size", domain.DEFAULTS["batch_size"], int)
        mult = resolve_hyper(given("learning_rate_multiplier"), "learning_rate_multiplier", 1.0, float)
        suffix = domain.check_suffix(request.suffix)
        if request.validation_file and request.validation_file == request.training_file:
            raise InvalidArgument("validation_file must differ from training_file", reason="invalid_value",
                                  metadata={"param": "validation_file"})
        row = await self._jobs.create(JobSpec(
            family="openai", owner_id=_owner(), model_id=request.model,
            job_name=f"fine-tune {request.training_file}"[:255], epochs=epochs, batch_size=batch,
            learning_rate=domain.BASE_LR * mult, lora_r=domain.DEFAULTS["lora_r"],
            lora_alpha=domain.DEFAULTS["lora_alpha"], lora_dropout=domain.DEFAULTS["lora_dropout"],
            seed=request.seed if request.HasField("seed") else secrets.randbelow(2**31 - 1), suffix=suffix,
            training_file=request.training_file, validation_file=request.validation_file or None,
        ))  # fmt: skip
        return openai_job(row)

    async def ListFineTuningJobs(self, request: pb.ListFineTuningJobsRequest,
                                 context: Any) -> pb.ListFineTuningJobsResponse:
        limit = _limit(request)
        after = None
        if request.after:
            after = (await self._mine(request.after)).id
        rows = await self._jobs.repo.list(family="openai", owner=_owner(), after=after, limit=limit + 1)
        return pb.ListFineTuningJobsResponse(object="list", data=[openai_job(r) for r in rows[:limit]],
                                             has_more=len(rows) > limit)

    async def GetFineTuningJob(self, request: pb.GetFineTuningJobRequest, context: Any) -> pb.FineTuningJob:
        return openai_job(await self._mine(request.job_id))

    async def CancelFineTuningJob(self, request: pb.CancelFineTuningJobRequest, context: Any) -> pb.FineTuningJob:
        row = await self._mine(request.job_id)
        done = await self._jobs.cancel(row)
        if done is None:
            current = await self._mine(request.job_id)
            raise InvalidArgument(f"Job {row.public_id} has already {current.status}; it cannot be cancelled",
                                  reason="invalid_request_error", metadata={"param": "job_id"})
        return openai_job(done)

    async def ListFineTuningEvents(self, request: pb.ListFineTuningEventsRequest,
                                   context: Any) -> pb.ListFineTuningEventsResponse:
        row = await self._mine(request.job_id)
        limit = _limit(request)
        after = None
        if request.after:
            digits = request.after.removeprefix("ftevent-")
            if not digits.isascii() or not digits.isdigit() or len(digits) > 18:
                raise validation_error("after", excerpt(request.after, 80), "must be an event id (ftevent-<n>)")
            after = int(digits)
        events = await self._jobs.repo.events(row.id, after=after, limit=limit + 1)
        return pb.ListFineTuningEventsResponse(object="list", has_more=len(events) > limit, data=[
            pb.FineTuningJobEvent(object="fine_tuning.job.event", id=f"ftevent-{e.id}", created_at=_unix(e.created_at),
                                  level=e.level, message=e.message, data=value(e.data), type=e.type)
            for e in events[:limit]])
