"""Wiring of the analytics service: the ops endpoints now, analytics endpoints UNIMPLEMENTED until their issue."""

from __future__ import annotations

from llmlab.runtime import ServiceApp, ServiceSpec

from .ops import OpsServicer


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.analytics.v1", {"OpsService": OpsServicer(app)})


# No storage yet: no migrations and no Postgres pool; Redis is kept for the ops probes.
SPEC = ServiceSpec(name="analytics", setup=setup)
