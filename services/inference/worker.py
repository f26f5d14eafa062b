"""Batch workers: python -m services.inference.worker — consume the OpenAI batch queue (batches/jobs.py) with the
inference service's settings and Postgres schema, running each line through the inference service
(LLMLAB_INFERENCE_TARGET) and the files service (LLMLAB_FILES_TARGET); serve gRPC health on
LLMLAB_INFERENCE_WORKER_PORT (0: any port). docs/batches.md."""

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
from .batches.calls import Calls
from .batches.jobs import BatchWorker
from .batches.repository import BatchRepository
from .settings import InferenceSettings


async def setup(app: ServiceApp) -> None:
    assert app.db is not None and app.redis is not None and app.events is not None
    # The consumers' names say which process holds a unit of work: host and pid.
    worker = BatchWorker(BatchRepository(app.db), Calls(app.channel("files"), app.channel("inference")), app.redis,
                         app.settings.redis_prefix, f"{socket.gethostname()}-{os.getpid()}", app.events,
                         app.settings)
    for i, consumer in enumerate(worker.consumers):
        app.background(consumer.run, f"batch-units-{i}")
    app.background(worker.finalizer, "batch-finalizer")


WORKER_SPEC = ServiceSpec(
    name="inference-worker",
    setup=setup,
    settings_cls=InferenceSettings,
    migrations=SPEC.migrations,
    uses_redis=True,
)


def main() -> None:
    """Settings are the inference service's (LLMLAB_INFERENCE_*); only the port is the worker's own."""
    try:
        port = int(os.environ.get("LLMLAB_INFERENCE_WORKER_PORT", "0"))
        settings = load_settings(InferenceSettings, "inference", port=port)
    except (SettingsError, ValueError) as exc:
        print(f"llmlab-inference-worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(WORKER_SPEC.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(WORKER_SPEC, settings))
    except (OSError, asyncpg.PostgresError, redis.ConnectionError) as exc:
        print(f"llmlab-inference-worker: failed to start: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
