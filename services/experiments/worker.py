"""Experiments workers: python -m services.experiments.worker — consume the experiments service's job queues, the
sweeps (sweep_jobs.py, docs/sweeps.md) and the research runs (research/runner.py, docs/research.md), with its
settings and Postgres schema; serve gRPC health on LLMLAB_EXPERIMENTS_WORKER_PORT (0: any port)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import asyncpg
import redis.asyncio as redis

from llmlab.runtime import ServiceApp, ServiceSpec, SettingsError, load_settings
from llmlab.runtime.logs import configure_logging
from llmlab.runtime.server import serve

from .app import SPEC
from .generation import Peers
from .research.runner import setup_research_runs
from .response_repository import ResponseRepository
from .settings import ExperimentsSettings
from .sweep_jobs import SweepWorker
from .sweep_repository import SweepRepository


async def setup_sweeps(app: ServiceApp) -> None:
    assert app.redis is not None and app.db is not None and app.events is not None
    assert isinstance(app.settings, ExperimentsSettings)
    peers = Peers(app.channel("inference"), app.channel("metrics"), app.events)
    # The consumer's name says which process holds an item: host and pid.
    worker = SweepWorker(SweepRepository(app.db), ResponseRepository(app.db), peers, app.events, app.settings,
                         app.redis, f"{socket.gethostname()}-{os.getpid()}")
    await worker.consumer.ensure_groups()
    app.background(worker.consumer.run, "sweep-items")
    app.background(worker.maintain, "sweep-requeue")


# One hook per job queue this process consumes.
HOOKS = (setup_sweeps, setup_research_runs)


async def setup(app: ServiceApp) -> None:
    for hook in HOOKS:
        await hook(app)


WORKER_SPEC = ServiceSpec(
    name="experiments-worker",
    setup=setup,
    settings_cls=ExperimentsSettings,
    migrations=SPEC.migrations,
    uses_redis=True,
)


def main() -> None:
    """Settings are the experiments service's (LLMLAB_EXPERIMENTS_*); only the port is the worker's own."""
    try:
        port = int(os.environ.get("LLMLAB_EXPERIMENTS_WORKER_PORT", "0"))
        settings = load_settings(ExperimentsSettings, "experiments", port=port)
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
