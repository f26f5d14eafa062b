"""Export workers: python -m services.files.worker — consume the export job queue (exports/jobs.py) with the files
service's settings, Postgres schema and blob store; serve gRPC health on LLMLAB_FILES_WORKER_PORT (0: any port)."""

from __future__ import annotations

import os
import socket

from llmlab.runtime import ServiceApp, ServiceSpec
from llmlab.runtime.server import main as run_service

from .app import SPEC, open_deps
from .exports.jobs import ExportJobs, ExportWorker
from .settings import FilesSettings


async def setup(app: ServiceApp) -> None:
    assert app.redis is not None
    deps = await open_deps(app)
    await ExportJobs(deps, app.channel("inference"), None).sweep()
    # The consumer's name says which process holds a job (exports.worker): host and pid.
    worker = ExportWorker(deps, app.channel("inference"), app.redis, app.settings.redis_prefix,
                          f"{socket.gethostname()}-{os.getpid()}")
    app.background(worker.consumer.run, "export-jobs")


WORKER_SPEC = ServiceSpec(
    name="files-worker",
    setup=setup,
    settings_cls=FilesSettings,
    migrations=SPEC.migrations,
    uses_redis=True,
)


def main() -> None:
    """Settings are the files service's (LLMLAB_FILES_*); only the port is the worker's own."""
    run_service(WORKER_SPEC, settings_of="files", port_env="LLMLAB_FILES_WORKER_PORT")


if __name__ == "__main__":
    main()
