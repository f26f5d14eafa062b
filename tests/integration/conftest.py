"""In-process services on port 0 against the real Postgres and Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp, ServiceSpec


async def start_app(spec: ServiceSpec, database_url: str, redis_url: str, schema: str, prefix: str) -> ServiceApp:
    settings = load_settings(
        spec.settings_cls,
        spec.name,
        environ={},
        port=0,
        database_url=database_url,
        redis_url=redis_url,
        db_schema=schema,
        redis_prefix=prefix,
        shutdown_grace_seconds=1.0,
    )
    app = ServiceApp(spec, settings)
    await app.start()
    return app


@pytest.fixture
def app_factory(database_url, redis_url, schema, redis_prefix):
    """Start a service from its spec on port 0 in this test's schema and Redis prefix."""

    async def factory(spec: ServiceSpec) -> ServiceApp:
        return await start_app(spec, database_url, redis_url, schema, redis_prefix)

    return factory


@pytest.fixture
async def experiments_app(app_factory) -> AsyncIterator[ServiceApp]:
    from services.experiments.app import SPEC

    app = await app_factory(SPEC)
    yield app
    await app.stop()


@pytest.fixture
async def experiments_channel(experiments_app) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{experiments_app.port}") as channel:
        yield channel

