"""Wiring of the analytics service: the read model's consumers, the analytics, usage and ops servicers."""

from __future__ import annotations

import gc
import pathlib

import structlog

from llmlab.runtime import ServiceApp, ServiceSpec

from .consumer import ConsumerMetrics, start_consumers
from .ops import OpsServicer
from .platform_stats import PlatformStats
from .projector import Applied, Projector
from .repository import AnalyticsRepository
from .servicer import AnalyticsServicer
from .settings import AnalyticsSettings
from .usage_repository import UsageRepository
from .usage_servicer import UsageServicer
from .webhooks.delivery import GROUP, Deliverer
from .webhooks.repository import WebhookRepository
from .webhooks.servicer import WebhookServicer

log = structlog.get_logger(__name__)


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    settings = app.settings
    assert isinstance(settings, AnalyticsSettings)
    projector = Projector(app.db)
    webhooks = WebhookRepository(app.db)
    deliverer = Deliverer(app, webhooks)

    async def on_applied(applied: Applied) -> None:
        try:
            await deliverer.check_limits(applied.messages)
        except Exception:  # the usage is applied; the next usage event of the user checks the limit again
            log.exception("usage limit check failed")

    start_consumers(app, projector, on_applied, ConsumerMetrics(app.metrics.registry))
    repo = AnalyticsRepository(app.db)
    platform = PlatformStats(repo, app.channel("inference"))
    app.serve_package("llmlab.analytics.v1", {
        "OpsService": OpsServicer(app),
        "AnalyticsService": AnalyticsServicer(repo, platform),
        "UsageService": UsageServicer(UsageRepository(app.db), app.channel("auth")),
        "WebhookService": WebhookServicer(webhooks, settings),
    })
    app.background(deliverer.schedule, "webhook-scheduler")
    app.background(deliverer.consumer.run, f"{GROUP}-worker")
    # Start-up leaves ~100,000 long-lived objects (scipy, scikit-learn, protobuf descriptors). Every full collection
    # traversed them all: 50-150 ms pauses in one optimisation request of four (bench/analytics.py, p95 147 ms ->
    # 39 ms once frozen). Frozen objects are never collected, which is what they are: alive until exit.
    gc.freeze()


SPEC = ServiceSpec(
    name="analytics",
    setup=setup,
    settings_cls=AnalyticsSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
