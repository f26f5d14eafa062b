"""TrainingService: `/api/training...` in the lab envelope (docs/api.md "lab", docs/training.md): proto <-> domain."""

from __future__ import annotations

from typing import Any

from llmlab.inference.v1 import training_service_pb2 as pb
from llmlab.runtime import validation_error
from llmlab.runtime.envelope import iso, meta, value

from ..models.catalogue import optional, require_name
from . import domain
from .jobs import JobSpec, TrainingJobs
from .repository import JobRow


def _when(ts: Any) -> Any:
    return value(iso(ts) if ts is not None else None)


def lab_job(r: JobRow) -> pb.TrainingJob:
    return pb.TrainingJob(
        id=r.id, model_id=r.model_id, job_name=r.job_name, status=domain.LAB_STATUS[r.status],
        progress=round(r.progress, 1), epochs=r.epochs, current_epoch=r.current_epoch,
        learning_rate=r.learning_rate, batch_size=r.batch_size, created_at=iso(r.created_at),
        started_at=_when(r.started_at), completed_at=_when(r.completed_at),
    )  # fmt: skip


def lab_job_detail(r: JobRow) -> pb.TrainingJobDetail:
    return pb.TrainingJobDetail(
        id=r.id, model_id=r.model_id, job_name=r.job_name, status=domain.LAB_STATUS[r.status],
        progress=round(r.progress, 1), epochs=r.epochs, current_epoch=r.current_epoch,
        learning_rate=r.learning_rate, batch_size=r.batch_size, lora_r=r.lora_r, lora_alpha=r.lora_alpha,
        lora_dropout=r.lora_dropout,
        current_loss=value(round(r.current_loss, 4) if r.current_loss is not None else None),
        created_at=iso(r.created_at), started_at=_when(r.started_at), completed_at=_when(r.completed_at),
        logs=r.logs,
    )  # fmt: skip


class TrainingServicer:
    def __init__(self, jobs: TrainingJobs) -> None:
        self._jobs = jobs

    async def ListTrainingJobs(self, request: pb.ListTrainingJobsRequest, context: Any) -> pb.ListTrainingJobsResponse:
        rows = await self._jobs.repo.list()
        return pb.ListTrainingJobsResponse(success=True, data=pb.ListTrainingJobsData(
            training_jobs=[lab_job(r) for r in rows]), meta=meta())

    async def CreateTrainingJob(self, request: pb.CreateTrainingJobRequest,
                                context: Any) -> pb.CreateTrainingJobResponse:
        if not request.model_id:
            raise validation_error("model_id", "", "is required")
        job_name = require_name("job_name", request.job_name)
        values = {k: optional(request, k) for k in domain.DEFAULTS}
        values = {k: (v if v is not None else domain.DEFAULTS[k]) for k, v in values.items()}
        row = await self._jobs.create(JobSpec(
            family="lab", owner_id="", model_id=request.model_id, job_name=job_name,
            training_file=request.training_file if request.HasField("training_file") else None, **values,
        ))  # fmt: skip
        return pb.CreateTrainingJobResponse(success=True, data=pb.CreateTrainingJobData(
            id=row.id, job_name=row.job_name, model_id=row.model_id, status=domain.LAB_STATUS[row.status],
            message="Training job created and started successfully"), meta=meta())

    async def GetTrainingJob(self, request: pb.GetTrainingJobRequest, context: Any) -> pb.GetTrainingJobResponse:
        row = await self._jobs.get(request.id)
        return pb.GetTrainingJobResponse(success=True, data=lab_job_detail(row), meta=meta())

    async def PauseTrainingJob(self, request: pb.PauseTrainingJobRequest,
                               context: Any) -> pb.PauseTrainingJobResponse:
        row = await self._jobs.pause(request.id)
        return pb.PauseTrainingJobResponse(success=True, data=pb.TrainingJobStatusData(
            id=row.id, status=domain.LAB_STATUS[row.status], message="Training job paused successfully"),
            meta=meta())

    async def ResumeTrainingJob(self, request: pb.ResumeTrainingJobRequest,
                                context: Any) -> pb.ResumeTrainingJobResponse:
        row = await self._jobs.resume(request.id)
        return pb.ResumeTrainingJobResponse(success=True, data=pb.TrainingJobStatusData(
            id=row.id, status=domain.LAB_STATUS[row.status], message="Training job resumed successfully"),
            meta=meta())
