"""The whole platform (six service processes + the real Envoy) on free ports, shared by the e2e tests.

Auth is enforced: the first admin comes from the settings (a random password per session), and the `http` client
and the SDK clients use an API key the admin mints once per session.
"""

from __future__ import annotations

import io
import os
import secrets
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import grpc
import httpx
import pytest

from llmlab.devstack import free_port
from llmlab.devstack.launcher import PlatformConfig, platform_supervisor
from llmlab.runtime.settings import SERVICES

from ..conftest import delete_keys, drop_schemas


class LogTee(io.TextIOBase):
    """The supervisor's output: passed on to stdout and kept, so tests can search every service's log lines."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.append(text)
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()

    def text(self) -> str:
        return "".join(self.lines)


@dataclass
class Platform:
    """A running stack: where the gateway and each service listen, its Postgres schemas, and its credentials."""

    gateway_url: str
    admin_port: int
    service_ports: dict[str, int]
    database_url: str
    schema_prefix: str
    admin_username: str = "admin"
    admin_password: str = ""
    jwt_secret: str = ""
    api_key: str = ""  # the admin's key (every permission, no limits) that `http` and the SDK clients use
    logs: LogTee = field(default_factory=LogTee)

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def schema(self, service: str) -> str:
        return f"{self.schema_prefix}_{service}"

    def channel(self, service: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.service_ports[service]}")


@pytest.fixture(scope="session")
async def platform(run_id, database_url, redis_url) -> AsyncIterator[Platform]:
    prefix = f"e2e_{run_id}"
    ports = {svc: free_port() for svc in SERVICES}
    env = {f"LLMLAB_{svc.upper()}_DB_SCHEMA": f"{prefix}_{svc}" for svc in SERVICES}
    admin_password, jwt_secret = secrets.token_urlsafe(18), secrets.token_urlsafe(48)
    env.update({"LLMLAB_REDIS_PREFIX": prefix, "LLMLAB_SHUTDOWN_GRACE_SECONDS": "2",
                "LLMLAB_AUTH_ADMIN_USERNAME": "admin", "LLMLAB_AUTH_ADMIN_PASSWORD": admin_password,
                "LLMLAB_AUTH_JWT_SECRET": jwt_secret,
                # a killed run worker's run resumes within seconds
                "LLMLAB_EXPERIMENTS_RESEARCH_RUN_CLAIM_IDLE_MS": "3000"})
    # The webhook tests' receiver listens on 127.0.0.1 and fails once: allow loopback targets, retry quickly.
    env.update({"LLMLAB_ANALYTICS_WEBHOOK_ALLOW_PRIVATE": "true", "LLMLAB_ANALYTICS_WEBHOOK_BACKOFF_SECONDS": "0.5"})
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
    logs = LogTee()
    supervisor = platform_supervisor(cfg, output=logs)
    try:
        await supervisor.start()
        platform = Platform(cfg.gateway_url, cfg.admin_port, ports, database_url, prefix,
                            admin_password=admin_password, jwt_secret=jwt_secret, logs=logs)
        platform.api_key = await mint_admin_key(platform)
        yield platform
    finally:
        await supervisor.stop()
        await drop_schemas(database_url, prefix)
        await delete_keys(redis_url, prefix)


async def login(platform: Platform) -> dict:
    """POST /auth/token as the admin: the token pair."""
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        r = await client.post("/auth/token", json={"username": platform.admin_username,
                                                   "password": platform.admin_password})
        assert r.status_code == 200, r.text
        return r.json()


async def mint_admin_key(platform: Platform) -> str:
    tokens = await login(platform)
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        r = await client.post("/v1/auth/api-keys", json={"name": "e2e session"},
                              headers={"authorization": f"Bearer {tokens['access_token']}"})
        assert r.status_code == 200, r.text
        return r.json()["api_key"]


@pytest.fixture(scope="session")
async def http(platform) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with the admin's API key on every request."""
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30, headers=platform.auth_headers) as client:
        yield client


@pytest.fixture(scope="session")
async def anonymous(platform) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with no credential."""
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30) as client:
        yield client


@pytest.fixture
async def db(platform) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the experiments schema, to check what is stored."""
    conn = await asyncpg.connect(platform.database_url)
    await conn.execute(f"SET search_path TO {platform.schema('experiments')}")
    yield conn
    await conn.close()
