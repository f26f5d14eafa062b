"""EvaluationService's research routes: `POST /evaluations` records one run's metrics, `GET /experiments/{id}/metrics`
aggregates them over the experiment's runs (docs/research.md "Evaluations and metrics"). The experiment and the run
are the experiments service's: they are checked through its API. EvaluateModel and ListEvaluations (the lab's
model evaluations) are not implemented here yet: the generated base answers 501."""

from __future__ import annotations

import math
import statistics
import uuid
from typing import Any

import grpc
from google.protobuf import json_format

from llmlab.experiments.v1 import research_experiments_service_pb2 as rpb
from llmlab.experiments.v1 import research_experiments_service_pb2_grpc as rpb_grpc
from llmlab.metrics.v1 import evaluation_service_pb2 as pb
from llmlab.metrics.v1 import evaluation_service_pb2_grpc as pb_grpc
from llmlab.runtime import InvalidArgument, NotFound, Unavailable
from llmlab.runtime.envelope import iso
from llmlab.runtime.httprules import CREATED_METADATA

from .run_evaluation_repository import RunEvaluation, RunEvaluationRepository

MAX_METRICS = 100
MAX_METRIC_NAME = 64
LOOKUP_TIMEOUT_SECONDS = 10.0


def _uuid(name: str, v: str) -> str:
    try:
        return str(uuid.UUID(v))
    except (ValueError, AttributeError):
        raise InvalidArgument("Invalid request body", field_violations=[(name, "must be a UUID")]) from None


def aggregate(values: list[float]) -> dict[str, Any]:
    """mean, sample std (n - 1; 0 for one value), min, max, count."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "count": len(values)}


def aggregate_runs(evaluations: list[RunEvaluation]) -> dict[str, dict[str, Any]]:
    names: dict[str, list[float]] = {}
    for e in evaluations:
        for k, v in e.metrics.items():
            names.setdefault(k, []).append(v)
    return {k: aggregate(vs) for k, vs in names.items()}


def _response(e: RunEvaluation) -> pb.CreateEvaluationResponse:
    out = pb.CreateEvaluationResponse(id=e.id, experiment_id=e.experiment_id, run_id=e.run_id, metrics=e.metrics,
                                      created_at=iso(e.created_at))
    out.metadata.SetInParent()  # `{}` rather than absent when none was given
    out.metadata.update(e.metadata)
    return out


class RunEvaluationServicer:
    def __init__(self, repo: RunEvaluationRepository, experiments: grpc.aio.Channel) -> None:
        self._repo = repo
        self._experiments = rpb_grpc.ResearchExperimentServiceStub(experiments)

    async def _check(self, call: Any, request: Any) -> None:
        try:
            await call(request, timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(exc.details() or "Not found") from None
            raise Unavailable("The experiments service cannot be reached; nothing was stored, please retry") from None

    async def CreateEvaluation(self, request: pb.CreateEvaluationRequest,
                               context: Any) -> pb.CreateEvaluationResponse:
        problems: list[tuple[str, str]] = []
        for name, v in (("experiment_id", request.experiment_id), ("run_id", request.run_id)):
            try:
                _uuid(name, v)
            except InvalidArgument:
                problems.append((name, "must be a UUID" if v else "is required"))
        if not request.metrics:
            problems.append(("metrics", "must hold at least one metric"))
        elif len(request.metrics) > MAX_METRICS:
            problems.append(("metrics", f"must hold at most {MAX_METRICS} metrics"))
        for k, v in request.metrics.items():
            if not k or len(k) > MAX_METRIC_NAME:
                problems.append(("metrics", f"metric names must be 1..{MAX_METRIC_NAME} characters"))
            elif not math.isfinite(v):
                problems.append((f"metrics.{k}", "must be a finite number"))
        if problems:
            raise InvalidArgument("Invalid request body", field_violations=problems)
        experiment_id, run_id = _uuid("experiment_id", request.experiment_id), _uuid("run_id", request.run_id)
        await self._check(self._experiments.GetExperimentRun,
                          rpb.GetExperimentRunRequest(id=experiment_id, run_id=run_id))
        metadata = json_format.MessageToDict(request.metadata) if request.HasField("metadata") else {}
        e = await self._repo.create(experiment_id, run_id, dict(request.metrics), metadata)
        await context.send_initial_metadata(CREATED_METADATA)
        return _response(e)

    async def GetExperimentMetrics(self, request: pb.GetExperimentMetricsRequest,
                                   context: Any) -> pb.GetExperimentMetricsResponse:
        experiment_id = _uuid("experiment_id", request.experiment_id)
        await self._check(self._experiments.GetResearchExperiment,
                          rpb.GetResearchExperimentRequest(id=experiment_id))
        evaluations = await self._repo.latest_per_run(experiment_id)
        return pb.GetExperimentMetricsResponse(
            experiment_id=experiment_id,
            aggregated_metrics={k: pb.MetricAggregate(**v) for k, v in aggregate_runs(evaluations).items()},
            runs=[pb.RunMetrics(run_id=e.run_id, metrics=e.metrics) for e in evaluations],
        )


class EvaluationServicer(pb_grpc.EvaluationServiceServicer):
    """The one EvaluationService over its two resources: model evaluations (seed 002's `/api/models/{id}/evaluate`
    and `/api/evaluations`, model_evaluations.py) and research run evaluations (`/evaluations`,
    `/experiments/{id}/metrics`, this module)."""

    def __init__(self, models: Any, runs: RunEvaluationServicer) -> None:
        self.EvaluateModel = models.EvaluateModel
        self.ListEvaluations = models.ListEvaluations
        self.CreateEvaluation = runs.CreateEvaluation
        self.GetExperimentMetrics = runs.GetExperimentMetrics
