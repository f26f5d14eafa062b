"""AnalyticsService: proto ⇄ domain for the dashboard, optimisation, correlations and statistics endpoints."""

from __future__ import annotations

import asyncio
from typing import Any

from llmlab.analytics.v1 import analytics_service_pb2 as pb
from llmlab.analytics.v1 import analytics_service_pb2_grpc as pb_grpc
from llmlab.runtime.envelope import iso, meta, utcnow

from . import analysis, optimize
from .platform_stats import PlatformStats
from .repository import AnalyticsRepository, Combo


def _params(p: dict[str, float]) -> pb.SamplingParameters:
    return pb.SamplingParameters(
        temperature=p["temperature"], top_p=p["top_p"], max_tokens=int(p["max_tokens"]),
        frequency_penalty=p["frequency_penalty"], presence_penalty=p["presence_penalty"])


def _point(c: Combo) -> pb.ParetoPoint:
    return pb.ParetoPoint(parameters=_params(c.parameters), quality=round(c.quality, 2),
                          cost=round(c.mean_cost, 8), speed=round(c.mean_seconds, 3))


class AnalyticsServicer(pb_grpc.AnalyticsServiceServicer):
    def __init__(self, repo: AnalyticsRepository, platform: PlatformStats) -> None:
        self._repo = repo
        self._platform = platform

    async def GetDashboard(self, request: pb.GetDashboardRequest, context: Any) -> pb.GetDashboardResponse:
        now = utcnow()
        period = analysis.Period.parse(request.period, now)
        d = await analysis.dashboard(self._repo, period, analysis.split_list(list(request.models)),
                                     analysis.split_list(list(request.experiment_types)), now)
        data = pb.DashboardData(
            overview=pb.DashboardOverview(**d.overview),
            quality_trends=[pb.DashboardQualityPoint(**q) for q in d.quality_trends],
            model_performance=[pb.ModelPerformance(**m) for m in d.model_performance],
            parameter_insights=pb.ParameterInsights(
                optimal_ranges={p: pb.ValueRange(min=lo, max=hi) for p, (lo, hi) in d.optimal_ranges.items()},
                correlations=[pb.ParameterCorrelation(**c) for c in d.correlations]),
            recent_activity=[pb.RecentActivity(
                type=a["type"], experiment_id=a["experiment_id"], name=a["name"], timestamp=iso(a["timestamp"]),
                **({"quality": a["quality"]} if a["quality"] is not None else {})) for a in d.recent_activity],
        )
        return pb.GetDashboardResponse(success=True, data=data, meta=meta())

    async def GetOptimizationInsights(
        self, request: pb.GetOptimizationInsightsRequest, context: Any
    ) -> pb.GetOptimizationInsightsResponse:
        objective = optimize.objective_of(request.objective)
        constraints = optimize.parse_constraints(request.constraints)
        models = [constraints.model] if constraints.model else None
        if constraints.model and not await self._platform.model_exists(constraints.model):
            raise self._platform.unknown_model(constraints.model)
        combos = await self._repo.combo_totals(models)
        pairs = await self._repo.pair_totals(models)
        ins = await asyncio.to_thread(optimize.insights, combos, pairs, objective, constraints)
        name = optimize.OBJECTIVES[objective][0]
        data = pb.OptimizationInsightsData(
            recommendations=[pb.OptimizationRecommendation(
                objective=name, recommended_parameters=_params(r.combo.parameters),
                expected_quality=round(r.combo.quality, 2), confidence=r.confidence,
                based_on_experiments=r.combo.experiments, expected_cost=round(r.combo.mean_cost, 8),
                expected_speed=round(r.combo.mean_seconds, 3)) for r in ins.recommendations],
            parameter_sensitivity={p: pb.ParameterSensitivity(**s) for p, s in ins.sensitivity.items()},
            pareto_frontier=[_point(c) for c in ins.frontier],
            notes=ins.notes,
        )
        return pb.GetOptimizationInsightsResponse(success=True, data=data, meta=meta())

    async def GetCorrelations(self, request: pb.GetCorrelationsRequest, context: Any) -> pb.GetCorrelationsResponse:
        report = await analysis.correlations(self._repo)
        data = pb.CorrelationsData(
            correlations=pb.Correlations(
                parameter_quality=[pb.ParameterQualityCorrelation(**c) for c in report.parameter_quality],
                cross_metrics=[pb.CrossMetricCorrelation(**c) for c in report.cross_metrics]),
            insights=report.insights)
        return pb.GetCorrelationsResponse(success=True, data=data, meta=meta())

    async def GetModelStats(self, request: pb.GetModelStatsRequest, context: Any) -> pb.GetModelStatsResponse:
        s = await self._platform.model(request.model_id)
        data = pb.ModelStatsData(model_id=request.model_id, statistics=pb.ModelStatistics(
            total_requests=s.total_requests, average_quality=s.average_quality,
            average_response_time=s.average_response_time, total_cost=s.total_cost, success_rate=s.success_rate))
        return pb.GetModelStatsResponse(success=True, data=data, meta=meta())

    async def GetSystemStats(self, request: pb.GetSystemStatsRequest, context: Any) -> pb.GetSystemStatsResponse:
        s = await self._platform.system(utcnow())
        data = pb.SystemStatsData(usage=pb.SystemUsage(**s["usage"]),
                                  performance=pb.SystemPerformance(**s["performance"]))
        return pb.GetSystemStatsResponse(success=True, data=data, meta=meta())

    async def GetStatistics(self, request: pb.GetStatisticsRequest, context: Any) -> pb.GetStatisticsResponse:
        s = await self._platform.statistics()
        return pb.GetStatisticsResponse(success=True, data=pb.StatisticsData(**s, timestamp=iso(utcnow())),
                                        meta=meta())
