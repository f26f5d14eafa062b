"""What every benchmark shares: the whole platform on free ports in throwaway schemas (as `make up` runs it), an
admin API key, a lean keep-alive HTTP client, and the timing loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx

from llmlab.devstack import free_port
from llmlab.devstack.launcher import PlatformConfig, platform_supervisor
from llmlab.runtime.settings import SERVICES

ADMIN = "admin"


@contextlib.asynccontextmanager
async def running_platform(**env: str) -> AsyncIterator[PlatformConfig]:
    """Start everything quietly (the services' logs would drown the figures); drop its schemas afterwards.
    The first admin gets a random password (`admin_password(cfg)`)."""
    database_url = os.environ.get("LLMLAB_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    redis_url = os.environ.get("LLMLAB_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    cfg = PlatformConfig(
        database_url=database_url,
        redis_url=redis_url,
        gateway_port=free_port(),
        admin_port=free_port(),
        service_ports={svc: free_port() for svc in SERVICES},
        log_format="json",
        env={
            **{f"LLMLAB_{s.upper()}_DB_SCHEMA": f"{prefix}_{s}" for s in SERVICES},
            "LLMLAB_REDIS_PREFIX": prefix,
            "LLMLAB_LOG_LEVEL": "warning",
            "LLMLAB_AUTH_ADMIN_USERNAME": ADMIN,
            "LLMLAB_AUTH_ADMIN_PASSWORD": secrets.token_urlsafe(18),
            **env,
        },
    )
    quiet = open(os.devnull, "w")
    supervisor = platform_supervisor(cfg, output=quiet)
    try:
        await supervisor.start()
        yield cfg
    finally:
        await supervisor.stop()
        quiet.close()
        conn = await asyncpg.connect(database_url)
        try:
            for svc in SERVICES:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{prefix}_{svc}" CASCADE')
        finally:
            await conn.close()


def admin_password(cfg: PlatformConfig) -> str:
    return cfg.env["LLMLAB_AUTH_ADMIN_PASSWORD"]


async def mint_key(gateway_url: str, username: str, password: str, **body: object) -> tuple[str, str]:
    """(access token, API key) for a user: POST /auth/token, then POST /v1/auth/api-keys with the token."""
    async with httpx.AsyncClient(base_url=gateway_url, timeout=30) as http:
        r = await http.post("/auth/token", json={"username": username, "password": password})
        r.raise_for_status()
        token = r.json()["access_token"]
        r = await http.post("/v1/auth/api-keys", json={"name": "bench", **body},
                            headers={"authorization": f"Bearer {token}"})
        r.raise_for_status()
        return token, r.json()["api_key"]


async def admin_key(cfg: PlatformConfig) -> str:
    """An unlimited API key of the platform's admin."""
    return (await mint_key(cfg.gateway_url, ADMIN, admin_password(cfg)))[1]


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive GET client with fixed headers (httpx's own ~1 ms would blur the figures)."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self._port = port
        self._head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self, path: str) -> tuple[int, bytes]:
        conn = self._idle.pop() if self._idle else await asyncio.open_connection("127.0.0.1", self._port)
        reader, writer = conn
        writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n{self._head}\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        body = await reader.readexactly(length)
        self._idle.append(conn)
        return status, body

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def drive(call, requests: int, concurrency: int) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    """Run `requests` calls with `concurrency` workers; return per-call latencies (ms) and wall seconds."""
    latencies: list[float] = []
    remaining = iter(range(requests))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started
