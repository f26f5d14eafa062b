"""Experiments workers: python -m services.experiments.worker — consume the experiments service's job queues, the
sweeps (sweep_jobs.py, docs/sweeps.md) and the research runs (research/runner.py, docs/research.md), with its
settings and Postgres schema; serve gRPC health on LLMLAB_EXPERIMENTS_WORKER_PORT (0: any port)."""

from __future__ import annotations

import os
import socket

from llmlab.runtime import ServiceApp, ServiceSpec
from llmlab.runtime.server import main as run_service

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
    run_service(WORKER_SPEC, settings_of="experiments", port_env="LLMLAB_EXPERIMENTS_WORKER_PORT")


if __name__ == "__main__":
    main()
