"""Experiments workers: python -m services.experiments.worker — consume the experiments service's job queues with its
settings and Postgres schema; serve gRPC health on LLMLAB_EXPERIMENTS_WORKER_PORT (0: any port). Each job family
registers one setup hook in HOOKS."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable

import asyncpg
import redis.asyncio as redis

from llmlab.runtime import ServiceApp, ServiceSettings, ServiceSpec, SettingsError, load_settings
from llmlab.runtime.logs import configure_logging
from llmlab.runtime.server import serve

from .app import SPEC
from .research.runner import setup_research_runs

# One hook per job queue this process consumes.
HOOKS: list[Callable[[ServiceApp], Awaitable[None]]] = [
    setup_research_runs,  # research runs (docs/research.md "Runs")
]


async def setup(app: ServiceApp) -> None:
    for hook in HOOKS:
        await hook(app)


WORKER_SPEC = ServiceSpec(name="experiments-worker", setup=setup, settings_cls=SPEC.settings_cls,
                          migrations=SPEC.migrations, uses_redis=True)


def main() -> None:
    """Settings are the experiments service's (LLMLAB_EXPERIMENTS_*); only the port is the worker's own."""
    try:
        port = int(os.environ.get("LLMLAB_EXPERIMENTS_WORKER_PORT", "0"))
        settings: ServiceSettings = load_settings(SPEC.settings_cls, "experiments", port=port)
    except (SettingsError, ValueError) as exc:
        print(f"llmlab-experiments-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(WORKER_SPEC.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(WORKER_SPEC, settings))
    except (OSError, asyncpg.PostgresError, redis.ConnectionError) as exc:
        print(f"llmlab-experiments-worker: failed to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
