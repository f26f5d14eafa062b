"""AnalyticsService over gRPC on the real read model: dashboard, correlations and optimisation figures equal a
recomputation from the events that were published (scipy for r and p)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from scipy import stats as sps

from llmlab.analytics.v1 import analytics_service_pb2 as pb
from llmlab.analytics.v1 import analytics_service_pb2_grpc as pb_grpc

from .test_analytics_readmodel import analytics_app, lab_events, publish, wait_applied  # noqa: F401


@pytest.fixture
async def stub(analytics_app):  # noqa: F811
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_app.port}") as channel:
        yield pb_grpc.AnalyticsServiceStub(channel)


async def test_numbers_are_recomputable_from_the_events(analytics_app, stub):  # noqa: F811
    events = lab_events(20)
    await publish(analytics_app, events)
    await wait_applied(analytics_app.db, len(events))
    created = [e[2] for e in events if e[1] == "response.created"]
    scored = [e[2] for e in events if e[1] == "response.scored"]
    quality = np.array([s["metrics"]["overall_quality"] for s in scored])
    temps = np.array([c["parameters"]["temperature"] for c in created])

    d = (await stub.GetDashboard(pb.GetDashboardRequest(period="7d"))).data
    assert d.overview.total_responses == 20 and d.overview.total_experiments == 1
    assert d.overview.average_quality == pytest.approx(round(quality.mean(), 1))
    assert d.overview.total_cost == pytest.approx(sum(c["cost"] for c in created), abs=1e-6)
    assert d.overview.success_rate == 100.0 and d.overview.experiments_today == 1 and d.overview.active_models == 1
    assert [m.model for m in d.model_performance] == ["tiny-model"]
    assert d.model_performance[0].experiment_count == 2
    assert d.model_performance[0].avg_response_time == pytest.approx(
        np.mean([c["response_time"] for c in created]) / 1000, abs=1e-3)
    assert len(d.quality_trends) == 1 and d.quality_trends[0].top_model == "tiny-model"
    top = d.parameter_insights.correlations[0]
    assert (top.parameter, top.metric) in {("temperature", "overall_quality"), ("temperature", "creativity"),
                                           ("temperature", "coherence")}
    assert [a.type for a in d.recent_activity] == ["experiment_completed", "experiment_created"]
    assert d.recent_activity[0].quality == 70.0 and not d.recent_activity[1].HasField("quality")
    assert "temperature" in d.parameter_insights.optimal_ranges

    c = (await stub.GetCorrelations(pb.GetCorrelationsRequest())).data
    row = next(r for r in c.correlations.parameter_quality
               if (r.parameter, r.quality_metric) == ("temperature", "overall_quality"))
    ref = sps.pearsonr(temps, quality)
    assert row.correlation == pytest.approx(ref.statistic, abs=1e-4)
    assert row.p_value == pytest.approx(ref.pvalue, rel=1e-3)
    assert row.significance == "highly_significant"
    assert any("temperature" in s and "Pearson r" in s for s in c.insights)
    assert all(r.parameter != "top_p" for r in c.correlations.parameter_quality)  # constant: no r

    o = (await stub.GetOptimizationInsights(pb.GetOptimizationInsightsRequest(objective="quality"))).data
    assert o.recommendations[0].recommended_parameters.temperature == pytest.approx(0.9)
    best = [s["metrics"]["overall_quality"] for c_, s in zip(created, scored, strict=True)
            if c_["parameters"]["temperature"] == 0.9]
    assert o.recommendations[0].expected_quality == pytest.approx(np.mean(best), abs=0.01)
    assert o.recommendations[0].based_on_experiments == 2
    assert o.parameter_sensitivity["temperature"].sensitivity == "high"
    assert len(o.pareto_frontier) >= 1


@pytest.mark.parametrize(("rpc", "request_"), [
    ("GetDashboard", pb.GetDashboardRequest(period="1y")),
    ("GetDashboard", pb.GetDashboardRequest(experiment_types=["weird"])),
    ("GetOptimizationInsights", pb.GetOptimizationInsightsRequest(objective="fast")),
    ("GetOptimizationInsights", pb.GetOptimizationInsightsRequest(constraints="{not json")),
])
async def test_bad_input_is_invalid_argument(stub, rpc, request_):
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(stub, rpc)(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_an_empty_read_model_says_so(stub):
    c = (await stub.GetCorrelations(pb.GetCorrelationsRequest())).data
    assert list(c.insights) == ["Too little data for correlations: 0 scored response(s); at least 3 are needed."]
    o = (await stub.GetOptimizationInsights(pb.GetOptimizationInsightsRequest())).data
    assert not o.recommendations and o.notes[0].startswith("Too little data")
    d = (await stub.GetDashboard(pb.GetDashboardRequest())).data
    assert d.overview.total_responses == 0 and d.overview.success_rate == 0.0
