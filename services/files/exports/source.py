"""Experiments as the experiments service returns them (ExperimentService.GetExperiment over gRPC), and the
model facts a reproducibility record names (inference's GetModel and GetEngineStatus)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
from google.protobuf import json_format

from llmlab.experiments.v1 import experiments_service_pb2 as exp_pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as exp_grpc
from llmlab.inference.v1 import inference_service_pb2 as inf_pb
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.runtime import NotFound, Unavailable, validation_error

PAGE = 100
MAX_REPORT_EXPERIMENTS = 1000
PEER_TIMEOUT_S = 30.0
MODEL_TIMEOUT_S = 3.0


def _dict(msg: Any) -> dict[str, Any]:
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _unavailable(exc: grpc.aio.AioRpcError) -> Unavailable:
    return Unavailable(f"The experiments service did not answer ({exc.code().name.lower()})")


async def experiment(channel: grpc.aio.Channel, experiment_id: int) -> dict[str, Any]:
    """One experiment with its responses[] as a plain dict (proto field names)."""
    stub = exp_grpc.ExperimentServiceStub(channel)
    try:
        answer = await stub.GetExperiment(exp_pb.GetExperimentRequest(id=experiment_id), timeout=PEER_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(f"Experiment with ID {experiment_id} not found", reason="EXPERIMENT_NOT_FOUND",
                           details={"experiment_id": experiment_id}) from None
        raise _unavailable(exc) from None
    return _dict(answer.data.experiment)


async def experiments(channel: grpc.aio.Channel, ids: list[int]) -> list[dict[str, Any]]:
    """Several experiments in the order asked, read a few at a time."""
    sem = asyncio.Semaphore(8)

    async def one(i: int) -> dict[str, Any]:
        async with sem:
            return await experiment(channel, i)

    return list(await asyncio.gather(*(one(i) for i in ids)))


def _day(text: str, field: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise validation_error(field, text, "must be a date YYYY-MM-DD") from None


async def ids_in_range(channel: grpc.aio.Channel, date_from: str, date_to: str) -> list[int]:
    """Ids of the experiments created within [date_from, date_to] (inclusive days)."""
    start = _day(date_from, "date_range.from") if date_from else ""
    end = _day(date_to, "date_range.to") if date_to else ""
    if start and end and start > end:
        raise validation_error("date_range", f"{start}..{end}", "from must not be after to")
    stub = exp_grpc.ExperimentServiceStub(channel)
    ids: list[int] = []
    page = 1
    while len(ids) < MAX_REPORT_EXPERIMENTS:
        try:
            answer = await stub.ListExperiments(
                exp_pb.ListExperimentsRequest(page=page, limit=PAGE, date_from=start, date_to=end,
                                              sort_by="created_at", sort_order="asc"),
                timeout=PEER_TIMEOUT_S,
            )
        except grpc.aio.AioRpcError as exc:
            raise _unavailable(exc) from None
        ids += [e.id for e in answer.data.experiments]
        if not answer.meta.pagination.has_next:
            break
        page += 1
    return ids[:MAX_REPORT_EXPERIMENTS]


async def model_facts(channel: grpc.aio.Channel, models: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model: registry record facts; and the engine's status. Empty when inference does not answer in time:
    an export does not fail for want of them, and the record then says they are unknown (null)."""
    stub = inf_grpc.InferenceServiceStub(channel)
    facts: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for model in sorted(set(models)):
        try:
            rec = (await stub.GetModel(inf_pb.GetModelRequest(id=model), timeout=MODEL_TIMEOUT_S)).model
        except grpc.aio.AioRpcError:
            facts[model] = {"id": model, "version": None, "backend": None, "artifact_sha256": None}
            continue
        config = _dict(rec.config) if rec.HasField("config") else {}
        facts[model] = {
            "id": rec.id, "version": rec.version or None, "backend": rec.backend or None,
            "base_model": rec.base_model or None,
            "artifact_sha256": config.get("artifact_sha256") or config.get("sha256"),
        }
    try:
        status = await stub.GetEngineStatus(inf_pb.GetEngineStatusRequest(), timeout=MODEL_TIMEOUT_S)
        engine = {
            "backend": status.backend,
            "max_batch_size": status.max_batch_size,
            "loaded_models": [{"model": m.model, "backend": m.backend, "device": m.device, "format": m.format,
                               "quantization": m.quantization} for m in status.loaded_models],
        }
    except grpc.aio.AioRpcError:
        engine = {}
    return facts, engine
