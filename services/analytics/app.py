"""Wiring of the analytics service: the read model's consumers, the analytics, usage and ops servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .consumer import ConsumerMetrics, start_consumers
from .ops import OpsServicer
from .platform import PlatformStats
from .projector import Applied, Projector
from .repository import AnalyticsRepository
from .servicer import AnalyticsServicer
from .settings import AnalyticsSettings
from .usage_repository import UsageRepository
from .usage_servicer import UsageServicer


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    projector = Projector(app.db)

    async def on_applied(applied: Applied) -> None:
        return None

    start_consumers(app, projector, on_applied, ConsumerMetrics(app.metrics.registry))
    repo = AnalyticsRepository(app.db)
    platform = PlatformStats(repo, app.channel("inference"))
    app.serve_package("llmlab.analytics.v1", {
        "OpsService": OpsServicer(app),
        "AnalyticsService": AnalyticsServicer(repo, platform),
        "UsageService": UsageServicer(UsageRepository(app.db), app.channel("auth")),
    })


SPEC = ServiceSpec(
    name="analytics",
    setup=setup,
    settings_cls=AnalyticsSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
