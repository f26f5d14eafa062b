"""Batch workers: python -m services.inference.worker — consume the OpenAI batch queue (batches/jobs.py) with the
inference service's settings and Postgres schema, running each line through the inference service
(LLMLAB_INFERENCE_TARGET) and the files service (LLMLAB_FILES_TARGET); serve gRPC health on
LLMLAB_INFERENCE_WORKER_PORT (0: any port). docs/batches.md."""

from __future__ import annotations

import os
import socket

from llmlab.runtime import ServiceApp, ServiceSpec
from llmlab.runtime.server import main as run_service

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
    run_service(WORKER_SPEC, settings_of="inference", port_env="LLMLAB_INFERENCE_WORKER_PORT")


if __name__ == "__main__":
    main()
