"""The whole platform on free ports in throwaway schemas, for benchmarks (as `make up` runs it)."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "gen"), str(ROOT / "libs"), str(ROOT)]

import asyncpg  # noqa: E402

from llmlab.devstack import free_port  # noqa: E402
from llmlab.devstack.platform import PlatformConfig, platform_supervisor  # noqa: E402
from llmlab.runtime.settings import SERVICES  # noqa: E402


@contextlib.asynccontextmanager
async def running_platform(**env: str) -> AsyncIterator[PlatformConfig]:
    """Start everything quietly (the services' logs would drown the figures); drop its schemas afterwards."""
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
