"""Wiring of the files service. Its endpoints answer UNIMPLEMENTED until the files issue lands."""

from __future__ import annotations

from llmlab.runtime import ServiceApp, ServiceSpec


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.files.v1", {})


# No storage and no events yet: no migrations, no Postgres pool, no Redis client.
SPEC = ServiceSpec(name="files", setup=setup, uses_redis=False)
