"""Wiring of the metrics service. Its endpoints answer UNIMPLEMENTED until the metrics issue lands."""

from __future__ import annotations

from llmlab.runtime import ServiceApp, ServiceSpec


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.metrics.v1", {})


# No storage and no events yet: no migrations, no Postgres pool, no Redis client.
SPEC = ServiceSpec(name="metrics", setup=setup, uses_redis=False)
