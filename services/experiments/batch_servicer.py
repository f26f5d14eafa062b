"""BatchExperimentService servicer (`/api/batch-experiments...`, docs/sweeps.md): translation between protos and the
sweep domain only."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from llmlab.experiments.v1 import batch_experiments_service_pb2 as pb
from llmlab.experiments.v1 import batch_experiments_service_pb2_grpc as pb_grpc
from llmlab.experiments.v1 import experiments_service_pb2 as epb
from llmlab.runtime import FailedPrecondition, validation_error
from llmlab.runtime.context import principal_var
from llmlab.runtime.envelope import iso, meta, pagination, seconds_text, utcnow, value

from . import domain, sweep_jobs, sweep_stats, sweeps
from .generation import Peers
from .settings import ExperimentsSettings
from .sweep_repository import SweepRepository, SweepRow
from .sweep_stats import Analysis, CombinationStats

RESULT_SORTS = ("quality", "combination_id", "cost", "response_time")
_PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")


def _parameters(params: dict[str, Any], names: tuple[str, ...] = _PARAMETERS) -> epb.Parameters:
    return epb.Parameters(**{k: params[k] for k in names if k in params})


def _swept(row: SweepRow) -> tuple[str, ...]:
    return tuple(p for p in sweeps.SWEPT if len({c.get(p) for c in row.combinations}) > 1)


def _r1(x: float) -> float:
    return round(x, 1)


def _completed_combinations(row: SweepRow, responses: list[sweep_stats.SweepResponse]) -> int:
    per: dict[int, int] = {}
    for r in responses:
        per[r.combination_id] = per.get(r.combination_id, 0) + 1
    return sum(1 for n in per.values() if n >= row.per_combination)


def _status(row: SweepRow, analysis: Analysis, responses: list[sweep_stats.SweepResponse],
            position: int | None) -> pb.BatchExperimentStatus:
    now = utcnow()
    eta = sweeps.eta(row.status, row.total_responses, row.done, row.started_at, row.completed_at,
                     row.estimated_seconds, now)
    progress = pb.BatchProgress(
        completed_combinations=_completed_combinations(row, responses), total_combinations=row.total_combinations,
        completed_responses=row.done, total_responses=row.total_responses,
        percentage=sweeps.percentage(row.done, row.total_responses), eta_minutes=eta.minutes)
    swept = _swept(row)
    if row.status == "running" and row.current_combination:
        progress.current_combination.CopyFrom(_parameters(row.combinations[row.current_combination - 1], swept))
    out = pb.BatchExperimentStatus(id=row.id, name=row.name, status=row.status, progress=progress,
                                   estimated_completion=iso(eta.completion), failed_responses=row.failed,
                                   dead_lettered=row.dead_lettered, priority=row.priority, eta_method=eta.method)
    scored = [r.overall_quality for r in responses if r.scored]
    best = analysis.best
    if scored and best is not None:
        bc = pb.BestCombination(quality=_r1(best.mean))
        for name in ("temperature", "top_p"):
            if name in best.parameters:
                setattr(bc, name, best.parameters[name])
        out.results_preview.CopyFrom(pb.ResultsPreview(best_quality=_r1(max(scored)),
                                                       average_quality=_r1(sum(scored) / len(scored)),
                                                       best_combination=bc))
        out.insights.extend(analysis.insights)
    if row.status == "queued" and position is not None:
        out.queue_position = position
    if row.status == "failed" and row.error:
        out.error = row.error
    return out


def _combination(c: CombinationStats) -> pb.CombinationResult:
    return pb.CombinationResult(
        combination_id=c.combination_id, parameters=_parameters(c.parameters), average_quality=_r1(c.mean),
        quality_std=round(c.std, 2),
        responses=[pb.IterationResult(iteration=r.iteration, response_id=r.response_id,
                                      quality=_r1(r.overall_quality or 0.0), cost=r.cost, seed=r.seed)
                   for r in c.responses],
        metrics_breakdown=epb.QualityMetrics(**{d: _r1(v) for d, v in c.breakdown.items()}),
        performance=pb.CombinationPerformance(average_response_time=round(c.mean_response_time_ms),
                                              total_cost=round(c.total_cost, 10)),
        confidence_interval=value(sweep_stats.ci_value(c)), n=c.n)


def _sort(combos: list[CombinationStats], sort_by: str, order: str) -> list[CombinationStats]:
    key = {"quality": lambda c: c.mean, "combination_id": lambda c: c.combination_id,
           "cost": lambda c: c.total_cost, "response_time": lambda c: c.mean_response_time_ms}[sort_by]
    return sorted(combos, key=lambda c: (key(c), c.combination_id), reverse=order == "desc")


class BatchExperimentServicer(pb_grpc.BatchExperimentServiceServicer):
    def __init__(self, repo: SweepRepository, peers: Peers, settings: ExperimentsSettings) -> None:
        self._repo = repo
        self._peers = peers
        self._settings = settings

    async def _load(self, sweep_id: int) -> tuple[SweepRow, list[sweep_stats.SweepResponse], Analysis]:
        row = await self._repo.get(sweep_id)
        if row is None:
            raise sweeps.not_found(sweep_id)
        responses = await self._repo.responses(sweep_id)
        return row, responses, sweep_stats.analyse(responses, row.combinations, _swept(row))

    async def _status_of(self, sweep_id: int) -> pb.BatchExperimentStatus:
        row, responses, analysis = await self._load(sweep_id)
        position = await self._repo.queue_position(sweep_id) if row.status == "queued" else None
        return _status(row, analysis, responses, position)

    async def CreateBatchExperiment(self, request: pb.CreateBatchExperimentRequest,
                                    context: Any) -> pb.CreateBatchExperimentResponse:
        new = sweeps.validate(
            request.name, request.description, request.prompt, request.model,
            json_format.MessageToDict(request.parameter_grid) if request.HasField("parameter_grid") else {},
            request.responses_per_combination if request.HasField("responses_per_combination") else None,
            request.priority, request.seed if request.HasField("seed") else None,
            self._settings.sweep_max_responses)
        row, position = await sweep_jobs.create(self._repo, self._peers, self._peers.events, self._settings, new,
                                                principal_var.get())
        created = pb.BatchExperimentCreated(
            id=row.id, name=row.name, status=row.status, total_combinations=row.total_combinations,
            total_responses=row.total_responses, estimated_cost=row.estimated_cost,
            estimated_duration=sweeps.duration_text(row.estimated_seconds), created_at=iso(row.created_at),
            queue_position=position, priority=row.priority, seed=row.seed)
        return pb.CreateBatchExperimentResponse(success=True, data=pb.CreateBatchExperimentData(
            batch_experiment=created), meta=meta())

    async def ListBatchExperiments(self, request: pb.ListBatchExperimentsRequest,
                                   context: Any) -> pb.ListBatchExperimentsResponse:
        q = domain.list_query(page=request.page if request.HasField("page") else None,
                              limit=request.limit if request.HasField("limit") else None)
        status = request.status
        if status:
            domain.validate_choice("status", status, sweeps.STATUSES)
        rows, total, has_next = await self._repo.list(status, q.limit, q.offset)
        items = [pb.BatchExperimentSummary(
            id=r.id, name=r.name, status=r.status, progress=sweeps.percentage(r.done, r.total_responses),
            total_combinations=r.total_combinations, best_quality=value(None if r.best_quality is None
                                                                        else _r1(r.best_quality)),
            created_at=iso(r.created_at), completed_at=value(iso(r.completed_at) if r.completed_at else None))
            for r in rows]
        return pb.ListBatchExperimentsResponse(success=True, data=pb.ListBatchExperimentsData(batch_experiments=items),
                                               meta=meta(pagination(q.page, q.limit, total.value,
                                                                    estimated=total.estimated, has_next=has_next)))

    async def GetBatchExperiment(self, request: pb.GetBatchExperimentRequest,
                                 context: Any) -> pb.GetBatchExperimentResponse:
        status = await self._status_of(request.id)
        return pb.GetBatchExperimentResponse(success=True, data=pb.GetBatchExperimentData(batch_experiment=status),
                                             meta=meta())

    async def CancelBatchExperiment(self, request: pb.CancelBatchExperimentRequest,
                                    context: Any) -> pb.CancelBatchExperimentResponse:
        after = await self._repo.cancel(request.id)
        if after is None:
            raise sweeps.not_found(request.id)
        if after != "cancelled":
            raise FailedPrecondition(f"Batch experiment {request.id} has already {after}; only a queued or running "
                                     "sweep can be cancelled", reason="SWEEP_FINISHED", http_status=409,
                                     details={"batch_experiment_id": request.id, "status": after})
        status = await self._status_of(request.id)
        return pb.CancelBatchExperimentResponse(success=True, data=pb.GetBatchExperimentData(
            batch_experiment=status), meta=meta())

    async def GetBatchExperimentResults(self, request: pb.GetBatchExperimentResultsRequest,
                                        context: Any) -> pb.GetBatchExperimentResultsResponse:
        q = domain.list_query(page=request.page if request.HasField("page") else None,
                              limit=request.limit if request.HasField("limit") else None)
        sort_by = domain.validate_choice("sort_by", request.sort_by or "quality", RESULT_SORTS)
        default_order = "asc" if sort_by == "combination_id" else "desc"
        order = domain.validate_choice("sort_order", (request.sort_order or default_order).lower(),
                                       domain.SORT_ORDERS)
        lo = request.min_quality if request.HasField("min_quality") else None
        hi = request.max_quality if request.HasField("max_quality") else None
        for name, v in (("min_quality", lo), ("max_quality", hi)):
            if v is not None and not 0 <= v <= 100:
                raise validation_error(name, v, "must be between 0 and 100")
        if lo is not None and hi is not None and lo > hi:
            raise validation_error("min_quality", lo, "must not be greater than max_quality")
        row, responses, analysis = await self._load(request.id)
        combos = [c for c in analysis.combinations
                  if (lo is None or c.mean >= lo) and (hi is None or c.mean <= hi)]
        page = _sort(combos, sort_by, order)[q.offset:q.offset + q.limit]
        scored = [r.overall_quality for r in responses if r.scored]
        end = row.completed_at or utcnow()
        summary = pb.BatchResultsSummary(
            total_combinations=row.total_combinations,
            completed_combinations=_completed_combinations(row, responses),
            best_quality=value(_r1(max(scored)) if scored else None),
            average_quality=value(_r1(sum(scored) / len(scored)) if scored else None),
            worst_quality=value(_r1(min(scored)) if scored else None),
            total_cost=round(sum(r.cost for r in responses), 10),
            total_duration=seconds_text((end - row.started_at).total_seconds() * 1000) if row.started_at else "0.0s")
        data = pb.BatchResultsData(batch_id=row.id, summary=summary, results=[_combination(c) for c in page])
        best = analysis.best
        if best is not None:
            data.analysis.CopyFrom(pb.BatchAnalysis(
                best_parameters=_parameters(best.parameters, _swept(row)),
                parameter_correlations={c.key: round(c.pearson_r, 3) for c in analysis.correlations},
                insights=analysis.insights,
                correlation_tests=[pb.CorrelationTest(
                    parameter=c.parameter, metric=c.metric, pearson_r=round(c.pearson_r, 4),
                    pearson_p_value=round(c.pearson_p, 6), spearman_rho=round(c.spearman_rho, 4),
                    spearman_p_value=round(c.spearman_p, 6), n=c.n) for c in analysis.correlations],
                best_vs_runner_up=value(sweep_stats.comparison_value(analysis.comparison))))
        return pb.GetBatchExperimentResultsResponse(success=True, data=data,
                                                    meta=meta(pagination(q.page, q.limit, len(combos))))
