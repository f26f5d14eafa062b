"""The metrics service on port 0 against the real Postgres and Redis: stored scores, idempotent re-scoring, events,
comparisons and trends over stored data (protos/llmlab/metrics/v1, docs/metrics.md)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf import json_format

from llmlab.metrics.v1 import metrics_service_pb2 as pb
from llmlab.metrics.v1 import metrics_service_pb2_grpc as pb_grpc
from llmlab.metrics.v1 import scoring_service_pb2 as spb
from llmlab.metrics.v1 import scoring_service_pb2_grpc as spb_grpc
from llmlab.runtime.server import ServiceApp

PROMPT = "Explain why the sky is blue in three sentences."
GOOD = ("Sunlight contains every colour. Air molecules scatter short blue wavelengths far more than red ones, "
        "which is Rayleigh scattering. Therefore blue light reaches our eyes from every direction of the sky.")
POOR = "sky blue sky blue sky blue sky blue"


@pytest.fixture
async def metrics_app(app_factory) -> AsyncIterator[ServiceApp]:
    from services.metrics.app import SPEC

    app = await app_factory(SPEC)
    yield app
    await app.stop()


@pytest.fixture
async def stubs(metrics_app):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{metrics_app.port}") as channel:
        yield spb_grpc.ScoringServiceStub(channel), pb_grpc.MetricsServiceStub(channel)


def scoring_input(rid: int, content: str, created: str, **subject) -> spb.ScoringInput:
    return spb.ScoringInput(content=content, prompt=PROMPT, finish_reason="stop", token_logprobs=[-1.2, -0.8],
                            subject=spb.ScoringSubject(response_id=rid, experiment_id=subject.get("experiment_id", 1),
                                                       experiment_type=subject.get("type", "single"), model="m",
                                                       created_at=created))


async def test_a_stored_score_is_served_replaced_and_announced(stubs, metrics_app, redis_url, redis_prefix):
    scoring, metrics = stubs
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    first = await scoring.ScoreResponse(spb.ScoreResponseRequest(input=scoring_input(7, GOOD, now)))
    assert first.result.scores.perplexity == pytest.approx(2.718, abs=0.01) and first.result.scorer_version
    got = (await metrics.GetResponseMetrics(pb.GetResponseMetricsRequest(response_id=7))).data
    assert json_format.MessageToDict(got.metrics) == json_format.MessageToDict(first.result.scores)
    assert got.detailed_analysis.coherence.factors["logical_flow"] == first.result.detailed_analysis.coherence.factors[
        "logical_flow"]
    # Scoring the same response again replaces its score: one row, the new numbers.
    await scoring.ScoreResponse(spb.ScoreResponseRequest(input=scoring_input(7, POOR, now)))
    assert await metrics_app.db.fetchval("SELECT count(*) FROM response_scores") == 1
    again = (await metrics.GetResponseMetrics(pb.GetResponseMetricsRequest(response_id=7))).data
    assert again.metrics.overall_quality < got.metrics.overall_quality
    client = redis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{redis_prefix}:stream:responses")
    finally:
        await client.aclose()
    assert [json.loads(f[b"data"])["response_id"] for _, f in entries] == [7, 7]
    assert {f[b"type"] for _, f in entries} == {b"response.scored"}


async def test_score_many_is_all_or_nothing(stubs, metrics_app):
    scoring, _ = stubs
    now = dt.datetime.now(dt.UTC).isoformat()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await scoring.ScoreResponses(spb.ScoreResponsesRequest(inputs=[
            scoring_input(1, GOOD, now), scoring_input(2, "   ", now)]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await metrics_app.db.fetchval("SELECT count(*) FROM response_scores") == 0
    ok = await scoring.ScoreResponses(spb.ScoreResponsesRequest(inputs=[
        scoring_input(1, GOOD, now), spb.ScoringInput(content=POOR, prompt=PROMPT)]))
    assert len(ok.results) == 2 and ok.results[0].scores.overall_quality > ok.results[1].scores.overall_quality
    # Only the input with a subject is stored.
    assert await metrics_app.db.fetchval("SELECT count(*) FROM response_scores") == 1


async def test_compare_two_uses_wilcoxon_and_unknown_ids_are_404(stubs):
    scoring, metrics = stubs
    now = dt.datetime.now(dt.UTC).isoformat()
    for rid, text in ((11, GOOD), (12, POOR)):
        await scoring.ScoreResponse(spb.ScoreResponseRequest(input=scoring_input(rid, text, now)))
    r = await metrics.CompareMetrics(pb.CompareMetricsRequest(response_ids=[12, 11]))
    analysis = r.data.comparison.comparative_analysis
    assert list(analysis.rankings.by_overall_quality) == [11, 12]
    sig = analysis.statistical_significance
    assert sig.test == "wilcoxon" and 0 <= sig.p_value.number_value <= 1 and sig.samples == 6
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await metrics.CompareMetrics(pb.CompareMetricsRequest(response_ids=[11, 99]))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "99" in err.value.details()


async def test_trends_fit_a_line_over_stored_days(stubs):
    scoring, metrics = stubs
    today = dt.datetime.now(dt.UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    texts = [POOR, POOR + " sky", GOOD[:90] + ".", GOOD]
    for i, text in enumerate(texts):  # four days, oldest first, quality rising
        day = (today - dt.timedelta(days=3 - i)).isoformat()
        await scoring.ScoreResponse(spb.ScoreResponseRequest(input=scoring_input(20 + i, text, day, experiment_id=i)))
    await scoring.ScoreResponse(spb.ScoreResponseRequest(
        input=scoring_input(30, GOOD, (today - dt.timedelta(days=60)).isoformat(), type="batch")))
    r = (await metrics.GetQualityTrends(pb.GetQualityTrendsRequest(period="7d"))).data.trends
    assert [p.date for p in r.data_points] == [(today - dt.timedelta(days=3 - i)).date().isoformat() for i in range(4)]
    assert r.summary.overall_trend == "improving" and r.summary.trend_percentage > 1
    assert r.summary.best_day == r.data_points[-1].date and r.summary.worst_day == r.data_points[0].date
    assert r.summary.slope.number_value > 0 and "points per day" in r.summary.note
    batch = (await metrics.GetQualityTrends(pb.GetQualityTrendsRequest(period="90d", experiment_type="batch")))
    assert len(batch.data.trends.data_points) == 1 and batch.data.trends.summary.slope.HasField("null_value")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await metrics.GetQualityTrends(pb.GetQualityTrendsRequest(period="2w"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_reference_metrics(stubs):
    scoring, _ = stubs
    r = await scoring.ComputeReferenceMetrics(spb.ComputeReferenceMetricsRequest(samples=[
        spb.ReferenceSample(prediction="Paris", references=["paris"], token_logprobs=[-0.1]),
        spb.ReferenceSample(prediction="Lyon is big", references=["Paris"]),
    ]))
    assert r.accuracy == 0.5 and r.sample_count == 2 and r.HasField("bleu") and r.HasField("rouge_2")
    assert r.samples[0].accuracy == 1 and not r.samples[1].HasField("perplexity")
