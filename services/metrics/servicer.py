"""ScoringService (internal) and MetricsService (`/api/metrics/...`): translation between protos and the domain only."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import structlog

from llmlab.metrics.v1 import metrics_service_pb2 as pb
from llmlab.metrics.v1 import metrics_service_pb2_grpc as pb_grpc
from llmlab.metrics.v1 import quality_pb2 as q
from llmlab.metrics.v1 import scoring_service_pb2 as spb
from llmlab.metrics.v1 import scoring_service_pb2_grpc as spb_grpc
from llmlab.runtime.envelope import iso, meta, utcnow, value
from llmlab.runtime.streams import EventPublisher

from . import domain, reference, scoring, statistical
from .judge import Judge, Verdict
from .repository import ScoreRepository, StoredScore

log = structlog.get_logger(__name__)

# Events about responses: the experiments service publishes response.created, this service response.scored.
RESPONSES_STREAM = "responses"


def scores_pb(metrics: dict[str, float], perplexity: float | None = None,
              mean_logprob: float | None = None) -> q.QualityScores:
    out = q.QualityScores(**{m: metrics[m] for m in statistical.METRICS})
    if perplexity is not None:
        out.perplexity = perplexity
    if mean_logprob is not None:
        out.mean_logprob = mean_logprob
    return out


def detailed_pb(analysis: dict[str, Any]) -> q.DetailedAnalysis:
    return q.DetailedAnalysis(**{
        name: q.DimensionAnalysis(score=d["score"], factors=d["factors"], feedback=d["feedback"],
                                  judge=q.JudgeScore(**d["judge"]) if d.get("judge") else None)
        for name, d in analysis.items()
    })


def result_pb(s: scoring.Score, calculated_at: dt.datetime, verdict: Verdict | None = None) -> spb.ScoringResult:
    return spb.ScoringResult(
        scores=scores_pb(s.metrics(), s.perplexity, s.mean_logprob),
        detailed_analysis=detailed_pb(domain.detailed(s, verdict)),
        calculated_at=iso(calculated_at),
        scorer_version=s.version,
        text_stats=q.TextStats(word_count=s.word_count, type_token_ratio=s.type_token_ratio, sentiment=s.sentiment),
    )


def _input(i: int | None, msg: spb.ScoringInput) -> domain.ScoringInput:
    prefix = "input." if i is None else f"inputs[{i}]."
    max_tokens = msg.max_tokens if msg.HasField("max_tokens") else None
    domain.check_input(prefix, msg.content, msg.prompt, max_tokens)
    subject = None
    if msg.HasField("subject"):
        s = msg.subject
        subject = domain.check_subject(prefix, {
            "response_id": s.response_id, "experiment_id": s.experiment_id, "experiment_type": s.experiment_type,
            "model": s.model, "created_at": s.created_at,
        })
    return domain.ScoringInput(msg.content, msg.prompt, max_tokens, msg.finish_reason, list(msg.token_logprobs),
                               subject)


async def _none() -> None:
    return None


def _score(x: domain.ScoringInput) -> scoring.Score:
    return scoring.score(x.content, x.prompt, max_tokens=x.max_tokens, finish_reason=x.finish_reason,
                         token_logprobs=x.token_logprobs)


class ScoringServicer(spb_grpc.ScoringServiceServicer):
    """Scores texts; stores the scores of lab responses (with the judge's verdict when one is configured) and
    announces them (response.scored)."""

    def __init__(self, repo: ScoreRepository, events: EventPublisher | None, judge: Judge | None = None) -> None:
        self._repo = repo
        self._events = events
        self._judge = judge

    async def _verdicts(self, inputs: list[domain.ScoringInput]) -> list[Verdict | None]:
        """The judge's verdict on every input to be stored (the judge's time is spent on stored scores only)."""
        if self._judge is None:
            return [None] * len(inputs)
        judge = self._judge
        return list(await asyncio.gather(*(
            judge.verdict(x.content, x.prompt) if x.subject is not None else _none() for x in inputs)))

    async def _store(self, pairs: list[tuple[domain.ScoringInput, scoring.Score]],
                     verdicts: list[Verdict | None]) -> list[dt.datetime]:
        rows = [{**x.subject, "metrics": s.metrics(), "perplexity": s.perplexity, "mean_logprob": s.mean_logprob,
                 "detailed_analysis": domain.detailed(s, v), "scorer_version": s.version}
                for (x, s), v in zip(pairs, verdicts, strict=True) if x.subject is not None]
        stored = await self._repo.upsert_many(rows) if rows else []
        if self._events is not None:
            for row in rows:
                try:
                    await self._events.publish(RESPONSES_STREAM, "response.scored", {
                        "response_id": row["response_id"], "experiment_id": row["experiment_id"],
                        "experiment_type": row["experiment_type"], "model": row["model"],
                        "metrics": row["metrics"], "perplexity": row["perplexity"],
                        "scorer_version": row["scorer_version"],
                    })
                except Exception as exc:  # the score is stored; consumers catch up from the store
                    log.warning("response.scored not published", error=type(exc).__name__)
        return stored

    async def ScoreResponse(self, request: spb.ScoreResponseRequest, context: Any) -> spb.ScoreResponseResponse:
        x = _input(None, request.input)
        s = _score(x)
        verdicts = await self._verdicts([x])
        stored = await self._store([(x, s)], verdicts)
        return spb.ScoreResponseResponse(result=result_pb(s, stored[0] if stored else utcnow(), verdicts[0]))

    async def ScoreResponses(self, request: spb.ScoreResponsesRequest, context: Any) -> spb.ScoreResponsesResponse:
        domain.check_count("inputs", len(request.inputs), 1, domain.MAX_SCORE_MANY)
        inputs = [_input(i, m) for i, m in enumerate(request.inputs)]
        pairs = [(x, _score(x)) for x in inputs]
        verdicts = await self._verdicts(inputs)
        stored = iter(await self._store(pairs, verdicts))
        now = utcnow()
        return spb.ScoreResponsesResponse(results=[
            result_pb(s, next(stored) if x.subject is not None else now, v)
            for (x, s), v in zip(pairs, verdicts, strict=True)])

    async def ComputeReferenceMetrics(
        self, request: spb.ComputeReferenceMetricsRequest, context: Any
    ) -> spb.ComputeReferenceMetricsResponse:
        domain.check_count("samples", len(request.samples), 1, domain.MAX_REFERENCE_SAMPLES)
        r = reference.compute([reference.Sample(s.prediction, list(s.references), list(s.token_logprobs))
                               for s in request.samples])
        out = spb.ComputeReferenceMetricsResponse(
            response_diversity=r.response_diversity, avg_response_length=r.avg_response_length,
            sample_count=len(r.samples),
        )
        for name in ("accuracy", "bleu", "rouge_1", "rouge_2", "rouge_l", "perplexity"):
            if getattr(r, name) is not None:
                setattr(out, name, getattr(r, name))
        for s in r.samples:
            item = out.samples.add(length=s.length)
            for name in ("accuracy", "bleu", "rouge_l", "perplexity"):
                if getattr(s, name) is not None:
                    setattr(item, name, getattr(s, name))
        return out


def _stored_scores(s: StoredScore) -> q.QualityScores:
    return scores_pb(s.metrics, s.perplexity, s.mean_logprob)


class MetricsServicer(pb_grpc.MetricsServiceServicer):
    """`/api/metrics/...` over the stored scores."""

    def __init__(self, repo: ScoreRepository) -> None:
        self._repo = repo

    async def GetResponseMetrics(
        self, request: pb.GetResponseMetricsRequest, context: Any
    ) -> pb.GetResponseMetricsResponse:
        s = await self._repo.get(request.response_id)
        if s is None:
            raise domain.not_scored([request.response_id])
        return pb.GetResponseMetricsResponse(success=True, meta=meta(), data=pb.ResponseMetricsData(
            response_id=s.response_id, metrics=_stored_scores(s), detailed_analysis=detailed_pb(s.detailed_analysis),
            calculated_at=iso(s.calculated_at), scorer_version=s.scorer_version,
        ))

    async def CalculateBatchMetrics(
        self, request: pb.CalculateBatchMetricsRequest, context: Any
    ) -> pb.CalculateBatchMetricsResponse:
        domain.check_count("responses", len(request.responses), 1, domain.MAX_BATCH)
        for i, item in enumerate(request.responses):
            domain.check_input(f"responses[{i}].", item.content, item.prompt, None)
        results = []
        for i, item in enumerate(request.responses):
            s = scoring.score(item.content, item.prompt)
            r = pb.BatchMetricsResult(index=i, metrics=scores_pb(s.metrics()),
                                      detailed_analysis=detailed_pb(domain.detailed(s)))
            if item.HasField("id"):
                r.id = item.id
            results.append(r)
        average = sum(r.metrics.overall_quality for r in results) / len(results)
        return pb.CalculateBatchMetricsResponse(success=True, meta=meta(), data=pb.CalculateBatchMetricsData(
            results=results, calculated_at=iso(utcnow()),
            summary=pb.BatchMetricsSummary(total_scored=len(results), average_quality=round(average, 1)),
        ))

    async def CompareMetrics(self, request: pb.CompareMetricsRequest, context: Any) -> pb.CompareMetricsResponse:
        ids = domain.compare_ids(list(request.response_ids))
        found = await self._repo.get_many(ids)
        missing = [i for i in ids if i not in found]
        if missing:
            raise domain.not_scored(missing)
        rows = [found[i] for i in ids]
        ranges, rankings = pb.MetricRanges(), pb.MetricRankings()
        for m in statistical.METRICS:
            values = [r.metrics[m] for r in rows]
            lo, hi, spread = statistical.metric_range(values)
            getattr(ranges, m).CopyFrom(pb.MetricRange(min=lo, max=hi, variance=spread))
            getattr(rankings, f"by_{m}").extend(statistical.ranking(ids, values))
        sig = statistical.quality_difference(ids, [r.metrics for r in rows])
        return pb.CompareMetricsResponse(success=True, meta=meta(), data=pb.CompareMetricsData(
            comparison=pb.MetricsComparison(
                responses=[pb.ComparedResponse(id=r.response_id, metrics=_stored_scores(r)) for r in rows],
                comparative_analysis=pb.ComparativeAnalysis(
                    metric_ranges=ranges, rankings=rankings,
                    statistical_significance=pb.StatisticalSignificance(
                        quality_difference_significant=value(sig.significant), p_value=value(sig.p_value),
                        test=sig.test, statistic=value(sig.statistic), samples=sig.samples, note=sig.note,
                    ),
                ),
            )))

    async def GetQualityTrends(
        self, request: pb.GetQualityTrendsRequest, context: Any
    ) -> pb.GetQualityTrendsResponse:
        query = domain.trends_query(request.period, request.metric, request.experiment_type)
        days = await self._repo.daily(query.since(utcnow().date()), query.experiment_type)
        points = [
            pb.TrendDataPoint(
                date=d.day.isoformat(), average_quality=round(d.means[query.metric], 1),
                experiment_count=d.experiments,
                top_metric=max(scoring.DIMENSIONS, key=lambda m, d=d: (d.means[m], m)),
            )
            for d in days
        ]
        fit = statistical.trend([d.day for d in days], [d.means[query.metric] for d in days])
        summary = pb.TrendSummary(overall_trend=fit.overall_trend, trend_percentage=fit.trend_percentage,
                                  slope=value(fit.slope), p_value=value(fit.p_value), note=fit.note)
        if points:
            summary.best_day = max(points, key=lambda p: (p.average_quality, p.date)).date
            summary.worst_day = min(points, key=lambda p: (p.average_quality, p.date)).date
        return pb.GetQualityTrendsResponse(success=True, meta=meta(), data=pb.QualityTrendsData(
            trends=pb.QualityTrends(period=query.period, metric=query.metric, data_points=points, summary=summary)))
