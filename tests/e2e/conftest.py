"""The whole platform (six service processes + the real Envoy) on free ports, shared by the e2e tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import grpc
import httpx
import pytest

from llmlab.devstack import free_port
from llmlab.devstack.platform import PlatformConfig, platform_supervisor
from llmlab.runtime.settings import SERVICES

from ..conftest import delete_keys, drop_schemas


@dataclass
class Platform:
    """A running stack: where the gateway and each service listen, and its Postgres schemas."""

    gateway_url: str
    admin_port: int
    service_ports: dict[str, int]
    database_url: str
    schema_prefix: str

    def schema(self, service: str) -> str:
        return f"{self.schema_prefix}_{service}"

    def channel(self, service: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.service_ports[service]}")


@pytest.fixture(scope="session")
async def platform(run_id, database_url, redis_url) -> AsyncIterator[Platform]:
    prefix = f"e2e_{run_id}"
    ports = {svc: free_port() for svc in SERVICES}
    env = {f"LLMLAB_{svc.upper()}_DB_SCHEMA": f"{prefix}_{svc}" for svc in SERVICES}
    env.update({"LLMLAB_REDIS_PREFIX": prefix, "LLMLAB_SHUTDOWN_GRACE_SECONDS": "2"})
    cfg = PlatformConfig(
        database_url=database_url,
        redis_url=redis_url,
        gateway_port=free_port(),
        admin_port=free_port(),
        service_ports=ports,
        log_format=os.environ.get("LLMLAB_TEST_LOG_FORMAT", "json"),
        env=env,
        grace=5.0,
    )
    supervisor = platform_supervisor(cfg)
    try:
        await supervisor.start()
        yield Platform(cfg.gateway_url, cfg.admin_port, ports, database_url, prefix)
    finally:
        await supervisor.stop()
        await drop_schemas(database_url, prefix)
        await delete_keys(redis_url, prefix)


@pytest.fixture(scope="session")
async def http(platform) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def db(platform) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the experiments schema, to check what is stored."""
    conn = await asyncpg.connect(platform.database_url)
    await conn.execute(f"SET search_path TO {platform.schema('experiments')}")
    yield conn
    await conn.close()
