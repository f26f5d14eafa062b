"""Export workers: python -m services.files.worker — consume the export job queue (exports/jobs.py) with the files
service's settings, Postgres schema and blob store; serve gRPC health on LLMLAB_FILES_WORKER_PORT (0: any port)."""

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
    try:
        port = int(os.environ.get("LLMLAB_FILES_WORKER_PORT", "0"))
        settings = load_settings(FilesSettings, "files", port=port)
    except (SettingsError, ValueError) as exc:
        print(f"llmlab-files-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(WORKER_SPEC.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(WORKER_SPEC, settings))
    except (OSError, asyncpg.PostgresError, redis.ConnectionError) as exc:
        print(f"llmlab-files-worker: failed to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
