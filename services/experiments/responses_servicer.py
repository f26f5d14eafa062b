"""ResponseService servicer (`/api/responses/...`): translation between protos and the domain only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.message import Message

from llmlab.experiments.v1 import experiments_service_pb2 as epb
from llmlab.experiments.v1 import responses_service_pb2 as pb
from llmlab.experiments.v1 import responses_service_pb2_grpc as pb_grpc
from llmlab.runtime import DomainError
from llmlab.runtime.envelope import iso, meta, pagination, seconds_text

from . import analysis, domain, responses
from .generation import Ended, Finished, Peers, Run
from .repository import ExperimentRepository
from .response_repository import ResponseFilter, ResponseRecord, ResponseRepository

JSON = "application/json"
SSE = "text/event-stream"
_PARAMETERS = ("temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty")


def _numbers(value: Any) -> Any:
    """Whole doubles as integers (0.0 -> 0), the way the transcoder prints them on every other lab route."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def render(msg: Message) -> bytes:
    """Proto3 JSON as the gateway's transcoder writes it (field names as declared, primitives always printed)."""
    return json.dumps(_numbers(json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                                         always_print_fields_with_no_presence=True)),
                      separators=(",", ":"), ensure_ascii=False).encode()


def wants_sse(context: Any) -> bool:
    """SSE when the client's Accept names text/event-stream (EventSource, `curl -H 'Accept: text/event-stream'`);
    the JSON envelope otherwise, `*/*` included."""
    accept = ",".join(v for k, v in (context.invocation_metadata() or ()) if k == "accept" and isinstance(v, str))
    return SSE in accept.lower()


def parameters_pb(params: dict[str, Any]) -> epb.Parameters:
    return epb.Parameters(**{k: params[k] for k in _PARAMETERS if k in params})


def metrics_pb(r: ResponseRecord) -> pb.ResponseMetrics:
    # Only the six dimensions: a stored metrics object may carry more (an older or imported row's overall score).
    dims = {d: r.quality_metrics[d] for d in analysis.DIMENSIONS if d in (r.quality_metrics or {})}
    m = pb.ResponseMetrics(overall_quality=r.overall_quality, **dims)
    if r.perplexity is not None:
        m.perplexity = r.perplexity
    if r.mean_logprob is not None:
        m.mean_logprob = r.mean_logprob
    return m


def performance_pb(r: ResponseRecord) -> pb.ResponsePerformance:
    return pb.ResponsePerformance(response_time=r.response_time_ms, token_count=r.token_count, cost=r.cost)


def response_pb(r: ResponseRecord) -> pb.GeneratedResponse:
    out = pb.GeneratedResponse(id=r.id, experiment_id=r.experiment_id, content=r.content,
                               parameters=parameters_pb(r.parameters), performance=performance_pb(r),
                               created_at=iso(r.created_at))
    if r.quality_metrics is not None and r.overall_quality is not None:
        out.metrics.CopyFrom(metrics_pb(r))
    return out


def error_pb(error: dict[str, Any]) -> pb.GenerationError:
    out = pb.GenerationError(message=error["message"], statusCode=error["statusCode"], code=error["code"])
    if error.get("details"):
        out.details.update(error["details"])
    return out


def summary_pb(s: Any) -> pb.GenerationSummary:
    return pb.GenerationSummary(total_generated=s.total_generated, average_quality=s.average_quality,
                                total_cost=s.total_cost, total_time=seconds_text(s.total_time_ms),
                                total_failed=s.total_failed)


def event_pb(experiment_id: int, event: Finished | Ended) -> pb.GenerationEvent:
    out = pb.GenerationEvent(experiment_id=experiment_id)
    if isinstance(event, Finished):
        out.status, out.current_response, out.total = "generating", event.done, event.total
        out.progress = min(99, event.done * 100 // event.total)
        if event.record is not None:
            out.response.CopyFrom(response_pb(event.record))
        if event.error is not None:
            out.error.CopyFrom(error_pb(event.error))
        return out
    out.status = event.status
    if event.status == "completed":
        out.progress = 100
        out.results.extend(response_pb(r) for r in event.results)
        out.summary.CopyFrom(summary_pb(event.summary))
    else:
        out.error.CopyFrom(error_pb(event.error or {}))
    return out


def _sse(msg: Message) -> httpbody_pb2.HttpBody:
    return httpbody_pb2.HttpBody(content_type=SSE, data=b"data: " + render(msg) + b"\n\n")


class ResponseServicer(pb_grpc.ResponseServiceServicer):
    """Generation, reads and comparisons of an experiment's responses."""

    def __init__(self, experiments: ExperimentRepository, repo: ResponseRepository, peers: Peers) -> None:
        self._experiments = experiments
        self._repo = repo
        self._peers = peers
        self._runs: set[asyncio.Task[None]] = set()

    async def drain(self, grace_seconds: float) -> None:
        """Let runs in progress finish (on shutdown), up to `grace_seconds`."""
        if self._runs:
            await asyncio.wait(set(self._runs), timeout=grace_seconds)

    async def GenerateResponses(
        self, request: pb.GenerateResponsesRequest, context: Any
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        experiment = await self._experiments.get(request.experiment_id)
        if experiment is None:
            raise responses.experiment_not_found(request.experiment_id)
        specific = {k: getattr(request.specific_parameters, k) for k in _PARAMETERS
                    if request.specific_parameters.HasField(k)}
        planned = responses.plan(experiment, specific, request.generate_all,
                                 request.count if request.HasField("count") else None)
        prices = await self._peers.prices(experiment.model)
        prices.check(planned)
        run = Run(experiment, planned, prices, self._repo, self._peers)
        task = asyncio.create_task(run.run(), name=f"generation-run:{run.id}")
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        sse = wants_sse(context)
        if sse:
            yield _sse(pb.GenerationEvent(progress=0, status="starting", experiment_id=experiment.id))
        while True:
            event = await run.events.get()
            if sse:
                yield _sse(event_pb(experiment.id, event))
            if isinstance(event, Ended):
                break
        if sse:
            return
        if event.status != "completed":
            err = event.error or {}
            raise DomainError(err.get("message", "generation failed"), reason=err.get("code"),
                              details=err.get("details"), http_status=err.get("statusCode", 502))
        yield httpbody_pb2.HttpBody(content_type=JSON, data=render(pb.GenerateResponsesFinal(
            success=True, meta=meta(), data=pb.GenerateResponsesData(
                experiment_id=experiment.id, results=[response_pb(r) for r in event.results],
                summary=summary_pb(event.summary)))))

    async def GetResponse(self, request: pb.GetResponseRequest, context: Any) -> pb.GetResponseResponse:
        r = await self._repo.get(request.id)
        if r is None:
            raise responses.responses_not_found([request.id])
        return pb.GetResponseResponse(success=True, data=pb.GetResponseData(response=response_pb(r)), meta=meta())

    async def ListResponses(self, request: pb.ListResponsesRequest, context: Any) -> pb.ListResponsesResponse:
        q = responses.page_query(request.page if request.HasField("page") else None,
                                 request.limit if request.HasField("limit") else None,
                                 request.sort_by, request.sort_order, responses.SORT_FIELDS)
        lo = request.min_quality if request.HasField("min_quality") else None
        hi = request.max_quality if request.HasField("max_quality") else None
        responses.quality_bounds("min_quality", lo, "max_quality", hi)
        if await self._experiments.get(request.experiment_id) is None:
            raise responses.experiment_not_found(request.experiment_id)
        rows, total, has_next = await self._repo.list(ResponseFilter(q, request.experiment_id, lo, hi))
        page = pagination(q.page, q.limit, total.value, estimated=total.estimated, has_next=has_next)
        return pb.ListResponsesResponse(success=True, meta=meta(page),
                                        data=pb.ListResponsesData(responses=[response_pb(r) for r in rows]))

    async def ListComparisonResponses(
        self, request: pb.ListComparisonResponsesRequest, context: Any
    ) -> pb.ListComparisonResponsesResponse:
        q = responses.page_query(request.page if request.HasField("page") else None,
                                 request.limit if request.HasField("limit") else None,
                                 request.sort_by, request.sort_order, responses.COMPARISON_SORT_FIELDS)
        lo = request.quality_min if request.HasField("quality_min") else None
        hi = request.quality_max if request.HasField("quality_max") else None
        responses.quality_bounds("quality_min", lo, "quality_max", hi)
        dates = domain.list_query(page=1, limit=1, date_from=request.date_from, date_to=request.date_to)
        f = ResponseFilter(q, None, lo, hi, search=request.search.strip(), models=responses.split_list(
            list(request.models)), tags=responses.split_list(list(request.tags)), date_from=dates.date_from,
            date_to=dates.date_to, date_to_exclusive=dates.date_to_exclusive)
        rows, total, has_next = await self._repo.list(f)
        applied = pb.ComparisonFiltersApplied(
            quality_range=[lo if lo is not None else 0.0, hi if hi is not None else 100.0]
            if lo is not None or hi is not None else [], models=f.models, tags=f.tags)
        for name in ("search", "date_from", "date_to"):
            if getattr(request, name).strip():
                setattr(applied, name, getattr(request, name).strip())
        page = meta(pagination(q.page, q.limit, total.value, estimated=total.estimated, has_next=has_next))
        items = []
        for r in rows:
            item = pb.ComparisonResponseItem(
                id=r.id, experiment_id=r.experiment_id, experiment_name=r.experiment_name, content=r.content,
                content_preview=responses.preview(r.content), model=r.model, parameters=parameters_pb(r.parameters),
                performance=performance_pb(r), created_at=iso(r.created_at), tags=r.tags, favorited=r.favorited)
            if r.quality_metrics is not None and r.overall_quality is not None:
                item.metrics.CopyFrom(metrics_pb(r))
            items.append(item)
        return pb.ListComparisonResponsesResponse(
            success=True, data=pb.ListComparisonResponsesData(responses=items),
            meta=pb.ComparisonMeta(pagination=page.pagination, timestamp=page.timestamp, request_id=page.request_id,
                                   filters_applied=applied))

    async def _records(self, ids: list[int]) -> list[ResponseRecord]:
        ids = responses.compare_ids(ids)
        found = await self._repo.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise responses.responses_not_found(missing)
        return [found[i] for i in ids]

    async def CompareResponses(
        self, request: pb.CompareResponsesRequest, context: Any
    ) -> pb.CompareResponsesResponse:
        records = await self._records(list(request.response_ids))
        diff = analysis.differences(records)
        impacts = analysis.parameter_impacts(records)
        return pb.CompareResponsesResponse(success=True, meta=meta(), data=pb.CompareResponsesData(
            comparison=pb.ResponseComparison(
                responses=[response_pb(r) for r in records],
                analysis=pb.ComparisonAnalysis(
                    quality_differences=pb.QualityDifferences(
                        max_difference=diff.max_difference, average_difference=diff.average_difference,
                        most_varied_metric=diff.most_varied_metric),
                    parameter_impact={i.parameter: pb.ParameterImpact(correlation_with_quality=i.r,
                                                                      impact_score=i.impact_score) for i in impacts},
                    recommendations=analysis.recommendations(records, impacts),
                ))))

    async def AnalyzeComparison(
        self, request: pb.AnalyzeComparisonRequest, context: Any
    ) -> pb.AnalyzeComparisonResponse:
        domain.validate_choice("analysis_type", request.analysis_type or "comprehensive", ("comprehensive",))
        records = await self._records(list(request.response_ids))
        scored = [r for r in records if r.quality_metrics is not None and r.overall_quality is not None]
        quality = pb.QualityAnalysis(quality_distribution={
            k: epb.MetricSummary(average=s.average, best=s.best, worst=s.worst)
            for k, s in analysis.distribution(records).items()})
        if scored:
            quality.best_overall = max(scored, key=lambda r: (r.overall_quality, -r.id)).id
            for d in analysis.DIMENSIONS:
                quality.metric_leaders[d] = max(scored, key=lambda r, d=d: (r.quality_metrics[d], -r.id)).id
        impact = pb.ParameterImpactAnalysis()
        effect = analysis.temperature_effect(records)
        if effect is not None:
            impact.temperature_effect.CopyFrom(pb.TemperatureEffect(
                high_temp_responses=effect.high, low_temp_responses=effect.low,
                impact_on_creativity=effect.impact_on_creativity))
        advice: list[str] = []
        if not request.HasField("include_recommendations") or request.include_recommendations:
            advice = analysis.recommendations(records, analysis.parameter_impacts(records))
            if effect is not None:
                advice.append(analysis.temperature_sentence(effect))
        stats = [r.text_stats or {} for r in records]
        return pb.AnalyzeComparisonResponse(success=True, meta=meta(), data=pb.AnalyzeComparisonData(
            comparison_analysis=pb.ComparisonAnalysisDetail(
                responses=[response_pb(r) for r in records], quality_analysis=quality, parameter_impact=impact,
                content_analysis=pb.ContentAnalysis(
                    length_comparison=[r.token_count for r in records],
                    vocabulary_diversity=[round(s.get("type_token_ratio", 0.0), 3) for s in stats],
                    sentiment_analysis=[round(s.get("sentiment", 0.0), 3) for s in stats]),
                recommendations=advice)))
