"""ExperimentService servicer: translation between protos and the domain only."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2
from google.protobuf.message import Message

from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc
from llmlab.runtime import NotFound
from llmlab.runtime.envelope import iso, meta, pagination, seconds_text, value
from llmlab.runtime.streams import EventPublisher

from . import analysis, domain
from .events import publish_experiment
from .models import ModelRegistry
from .repository import ExperimentRepository, ExperimentRow, ResponseRow
from .response_repository import ResponseRepository

_PARAMETER_FIELDS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")


def _present(msg: Message, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The fields explicitly set on a message of optional scalars, as a dict."""
    names = names or tuple(f.name for f in msg.DESCRIPTOR.fields)
    return {n: getattr(msg, n) for n in names if msg.HasField(n)}


def _parameters(params: dict[str, Any]) -> pb.Parameters:
    return pb.Parameters(**{k: params[k] for k in _PARAMETER_FIELDS if k in params})


def _duration(row: ExperimentRow) -> Any:
    return value(seconds_text(row.duration_ms) if row.duration_ms is not None else None)


def _common(row: ExperimentRow) -> dict[str, Any]:
    """The fields the list item (`GET /api/experiments`) and the full experiment (`GET /api/experiments/{id}`) share."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "type": row.type,
        "status": row.status,
        "model": row.model,
        "prompt": row.prompt,
        "parameters": _parameters(row.parameters),
        "quality_score": value(_round(row.quality_score)),
        # The responses generated so far once there are any; before that, how many a run generates by default.
        "response_count": row.generated or row.response_count,
        "total_cost": row.total_cost,
        "duration": _duration(row),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "tags": row.tags,
        "favorited": row.favorited,
        "archived": row.archived,
    }


def _summary(row: ExperimentRow) -> pb.Experiment:
    return pb.Experiment(**_common(row))


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def _response(r: ResponseRow) -> pb.ExperimentResponse:
    return pb.ExperimentResponse(
        id=r.id,
        content=r.content,
        quality_metrics=value(r.quality_metrics),
        response_time=r.response_time_ms,
        token_count=r.token_count,
        cost=r.cost,
    )


def _detail(row: ExperimentRow, responses: list[ResponseRow]) -> pb.ExperimentDetail:
    detail = pb.ExperimentDetail(**_common(row), responses=[_response(r) for r in responses])
    if row.parameter_ranges:
        detail.parameter_ranges.CopyFrom(pb.ParameterRanges(**row.parameter_ranges))
    return detail


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def _not_found(experiment_id: int) -> NotFound:
    return NotFound(
        f"Experiment with ID {experiment_id} not found",
        reason="EXPERIMENT_NOT_FOUND",
        details={"experiment_id": experiment_id},
    )


class ExperimentServicer(pb_grpc.ExperimentServiceServicer):
    """The lab family's `/api/experiments` routes (CRUD, stats, history, bulk actions) over the experiments store."""

    def __init__(self, repo: ExperimentRepository, models: ModelRegistry, responses: ResponseRepository,
                 events: EventPublisher | None = None) -> None:
        self._repo = repo
        self._models = models
        self._responses = responses
        self._events = events

    async def _detail_data(self, row: ExperimentRow) -> pb.ExperimentData:
        return pb.ExperimentData(experiment=_detail(row, await self._repo.responses(row.id)))

    async def ListExperiments(self, request: pb.ListExperimentsRequest, context: Any) -> pb.ListExperimentsResponse:
        q = domain.list_query(
            page=request.page if request.HasField("page") else None,
            limit=request.limit if request.HasField("limit") else None,
            search=request.search,
            type=request.type,
            status=request.status,
            model=request.model,
            date_from=request.date_from,
            date_to=request.date_to,
            archived=request.archived if request.HasField("archived") else None,
            sort_by=request.sort_by,
            sort_order=request.sort_order,
        )
        rows, total, has_next = await self._repo.list(q)
        return pb.ListExperimentsResponse(
            success=True,
            data=pb.ListExperimentsData(experiments=[_summary(r) for r in rows]),
            meta=meta(pagination(q.page, q.limit, total.value, estimated=total.estimated, has_next=has_next)),
        )

    async def GetExperiment(self, request: pb.GetExperimentRequest, context: Any) -> pb.GetExperimentResponse:
        row = await self._repo.get(request.id)
        if row is None:
            raise _not_found(request.id)
        return pb.GetExperimentResponse(success=True, data=await self._detail_data(row), meta=meta())

    async def CreateExperiment(
        self, request: pb.CreateExperimentRequest, context: Any
    ) -> pb.CreateExperimentResponse:
        new = domain.new_experiment(
            name=request.name,
            description=request.description,
            type=request.type,
            model=request.model,
            prompt=request.prompt,
            parameters=_present(request.parameters),
            parameter_ranges=_present(request.parameter_ranges) if request.HasField("parameter_ranges") else None,
            response_count=request.response_count if request.HasField("response_count") else None,
            tags=list(request.tags),
        )
        new.model = await self._models.resolve(new.model)
        row = await self._repo.create(new)
        await publish_experiment(self._events, "experiment.created", row)
        return pb.CreateExperimentResponse(success=True, data=await self._detail_data(row), meta=meta())

    async def UpdateExperiment(
        self, request: pb.UpdateExperimentRequest, context: Any
    ) -> pb.UpdateExperimentResponse:
        fields = _present(
            request,
            ("name", "description", "type", "model", "prompt", "status", "response_count", "favorited", "archived"),
        )
        patch = domain.ExperimentPatch(
            **fields,
            parameters=_present(request.parameters),
            parameter_ranges=_present(request.parameter_ranges),
            # A repeated field has no presence: an empty list leaves the tags alone. Clearing them is the bulk
            # `tag` action with remove_tags.
            tags=list(request.tags) if request.tags else None,
        ).validate()
        if patch.model is not None:
            patch.model = await self._models.resolve(patch.model)
        row = await self._repo.update(request.id, patch)
        if row is None:
            raise _not_found(request.id)
        return pb.UpdateExperimentResponse(success=True, data=await self._detail_data(row), meta=meta())

    async def GetExperimentStats(
        self, request: pb.GetExperimentStatsRequest, context: Any
    ) -> pb.GetExperimentStatsResponse:
        if await self._repo.get(request.id) is None:
            raise _not_found(request.id)
        records, failed = await self._responses.of_experiment(request.id)
        o = analysis.overview(records, failed)
        return pb.GetExperimentStatsResponse(success=True, meta=meta(), data=pb.ExperimentStatsData(
            experiment_id=request.id,
            overview=pb.StatsOverview(
                total_responses=o.total_responses, average_quality=o.quality.average, best_quality=o.quality.best,
                worst_quality=o.quality.worst, total_cost=o.total_cost,
                total_duration=seconds_text(o.total_duration_ms), success_rate=o.success_rate),
            quality_breakdown=pb.QualityBreakdown(**{
                d: pb.MetricSummary(average=s.average, best=s.best, worst=s.worst) for d, s in o.breakdown.items()}),
            parameter_performance=[
                pb.ParameterPerformance(parameters=_struct(g.parameters), average_quality=g.average_quality,
                                        response_count=g.response_count)
                for g in analysis.parameter_performance(records)],
        ))

    async def DeleteExperiment(
        self, request: pb.DeleteExperimentRequest, context: Any
    ) -> pb.DeleteExperimentResponse:
        if not await self._repo.delete(request.id):
            raise _not_found(request.id)
        return pb.DeleteExperimentResponse(
            success=True,
            data=pb.DeleteExperimentData(message="Experiment deleted successfully", deleted_id=request.id),
            meta=meta(),
        )

    async def GetExperimentHistory(
        self, request: pb.GetExperimentHistoryRequest, context: Any
    ) -> pb.GetExperimentHistoryResponse:
        view_mode = domain.validate_choice("view_mode", request.view_mode or "list", domain.VIEW_MODES)
        q = domain.list_query(
            page=request.page if request.HasField("page") else None,
            limit=request.limit if request.HasField("limit") else None,
            search=request.search,
            type=request.type,
            status=request.status,
            date_from=request.date_from,
            date_to=request.date_to,
            favorited=request.favorited if request.HasField("favorited") else None,
            archived=request.archived if request.HasField("archived") else None,
            sort_by=request.sort_by,
            sort_order=request.sort_order,
        )
        rows, total, has_next = await self._repo.list(q)
        timeline = domain.timeline(rows)
        return pb.GetExperimentHistoryResponse(
            success=True,
            data=pb.ExperimentHistoryData(
                experiments=[
                    pb.HistoryExperiment(
                        id=r.id,
                        name=r.name,
                        type=r.type,
                        status=r.status,
                        model=r.model,
                        quality_score=value(_round(r.quality_score)),
                        created_at=iso(r.created_at),
                        tags=r.tags,
                        favorited=r.favorited,
                        archived=r.archived,
                        summary=pb.HistorySummary(
                            response_count=r.generated or r.response_count, total_cost=r.total_cost,
                            duration=_duration(r),
                        ),
                    )
                    for r in rows
                ],
                timeline_data=[
                    pb.TimelineDay(
                        date=t.date,
                        experiments=t.ids,
                        total_quality=value(_round(t.average_quality)),
                        experiment_count=t.count,
                    )
                    for t in timeline
                ],
                view_mode=view_mode,
            ),
            meta=meta(pagination(q.page, q.limit, total.value, estimated=total.estimated, has_next=has_next)),
        )

    async def BulkExperiments(
        self, request: pb.BulkExperimentsRequest, context: Any
    ) -> pb.BulkExperimentsResponse:
        action = domain.bulk_action(
            request.action,
            json_format.MessageToDict(request.experiment_ids) if request.HasField("experiment_ids") else None,
            json_format.MessageToDict(request.params) if request.HasField("params") else None,
        )
        affected, missing = await self._repo.bulk(action)
        if missing:
            shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
            raise NotFound(
                f"Experiments not found: {shown} (nothing was changed)",
                reason="EXPERIMENT_NOT_FOUND",
                details={"not_found_ids": missing},
            )
        return pb.BulkExperimentsResponse(
            success=True,
            data=pb.BulkExperimentsData(
                action=action.action, affected_ids=affected, affected_count=len(affected)
            ),
            meta=meta(),
        )
