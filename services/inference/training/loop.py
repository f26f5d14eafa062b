"""Closing the loop (docs/training.md): a finished job's merged checkpoint -> int8 ONNX artifact (publish.py) ->
a registered model (base_model = the job's base) -> loaded by the inference service -> served on `/v1`, the lab's
`/api/models/{id}/generate` and experiments. The loss curve becomes the job's result file (a metrics CSV).

Nothing is left half-registered: when any step fails, the artifact and the model row are removed and the job fails;
a job cancelled while it was being published is unpublished the same way."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import pathlib
import shutil
from typing import TYPE_CHECKING, Any

import grpc
import structlog

from llmlab.files.v1 import files_service_pb2 as files_pb
from llmlab.files.v1 import files_service_pb2_grpc as files_grpc
from llmlab.inference.v1 import native_service_pb2 as native_pb
from llmlab.inference.v1 import native_service_pb2_grpc as native_grpc
from llmlab.runtime import AlreadyExists

from ..models.registry import NewModel
from . import domain
from .jobs import EVENTS_STREAM
from .publish import publish_merged
from .repository import JobRow

if TYPE_CHECKING:
    from .worker import TrainingWorker

log = structlog.get_logger(__name__)

SYSTEM_OWNER = "system"
RESULTS_PURPOSE = "fine-tune-results"


def metrics_csv(curve: list[dict[str, Any]]) -> bytes:
    """OpenAI's result file: step, train_loss, valid_loss (empty where not measured)."""
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["step", "epoch", "train_loss", "valid_loss"])
    for p in curve:
        w.writerow([p["step"], p["epoch"], f"{p['train_loss']:.6f}",
                    "" if p.get("valid_loss") is None else f"{p['valid_loss']:.6f}"])
    return out.getvalue().encode()


async def publish_job(worker: TrainingWorker, row: JobRow, done: dict[str, Any]) -> None:
    from .worker import TrainingFailed

    model_id = domain.fine_tuned_model_id(row.model_id, row.suffix, row.public_id, row.family)
    out = pathlib.Path(done["adapter"]).parent
    base = await worker.registry.get(row.model_id)
    registered = False
    try:
        artifact = await asyncio.to_thread(
            publish_merged, pathlib.Path(done["merged"]), model_id=model_id,
            name=f"{base.name} fine-tuned ({row.job_name})",
            description=f"LoRA fine-tune of {base.id} by training job {row.id} ({row.public_id}), merged and "
                        f"exported to int8 ONNX.",
            base_model_id=row.model_id, cache_dir=worker.cache, progress=lambda m: None)
        m = artifact.manifest
        try:
            await worker.registry.create(NewModel(
                id=model_id, name=m.name[:255], provider="local", base_model=row.model_id, status="available",
                description=m.description, model_size=m.model_size, parameter_count=m.parameter_count,
                capabilities=list(m.capabilities), languages=list(m.languages),
                category="chat" if "chat" in m.capabilities else "text-generation", owned_by=row.owner_id or "llmlab",
                max_tokens=base.max_tokens, context_window=m.context_window, model_identifier=model_id,
                version=row.public_id, config={"training_job": row.id, "fine_tuning_job": row.public_id},
                format=m.format, quantization=m.quantization, backend="onnx", artifact=m.to_dict(),
            ))  # fmt: skip
        except AlreadyExists:
            pass  # a retry of this job after a crash between registering and finishing
        registered = True
        stub = native_grpc.NativeServiceStub(worker.app.channel("inference"))
        await stub.NativeLoadModel(native_pb.NativeLoadModelRequest(model_name=model_id), timeout=300)
        result_files = await _store_metrics(worker, row, out)
    except Exception as exc:
        log.exception("publishing the fine-tuned model failed", job_id=row.id, model=model_id)
        await _unpublish(worker, model_id, registered)
        what = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        raise TrainingFailed(f"the fine-tuned model could not be published: {what}", "publish_failed") from exc
    if not await worker.repo.finish(row.id, row.attempt, "succeeded", fine_tuned_model=model_id,
                                    result_files=result_files):
        await _unpublish(worker, model_id, True)  # cancelled meanwhile
        return
    await worker.repo.add_event(row.id, f"New fine-tuned model created: {model_id}")
    await worker.repo.add_event(row.id, "The job has successfully completed")
    await worker.app.events.publish(EVENTS_STREAM, "fine_tuning.job.completed",  # type: ignore
                                    {"job_id": row.public_id, "training_job": row.id,
                                     "fine_tuned_model": model_id, "base_model": row.model_id})
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    shutil.rmtree(out / "merged", ignore_errors=True)


async def _store_metrics(worker: TrainingWorker, row: JobRow, out: pathlib.Path) -> list[str]:
    curve = json.loads((out / "metrics.json").read_text())
    stub = files_grpc.FileServiceStub(worker.app.channel("files"))
    stored = await stub.StoreFile(files_pb.StoreFileRequest(
        owner_id=row.owner_id or SYSTEM_OWNER, filename=f"{row.public_id}-metrics.csv", purpose=RESULTS_PURPOSE,
        content_type="text/csv", content=metrics_csv(curve)), timeout=30)
    await worker.repo.report(row.id, row.attempt, metrics=curve)
    return [stored.file.id]


async def _unpublish(worker: TrainingWorker, model_id: str, registered: bool) -> None:
    if registered:
        try:
            await worker.registry.delete(model_id)
        except Exception:
            log.exception("could not delete the half-published model", model=model_id)
    shutil.rmtree(worker.cache / model_id, ignore_errors=True)
