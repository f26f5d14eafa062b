"""Wiring of the experiments service: its spec, settings and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .generation import Peers
from .models import ModelRegistry
from .repository import ExperimentRepository
from .response_repository import ResponseRepository
from .responses_servicer import ResponseServicer
from .servicer import ExperimentServicer


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    # Channels connect lazily: the inference and metrics services may start after this one.
    models = ModelRegistry(app.channel("inference"))
    experiments, responses = ExperimentRepository(app.db), ResponseRepository(app.db)
    generation = ResponseServicer(experiments, responses,
                                  Peers(app.channel("inference"), app.channel("metrics"), app.events))
    # Runs in progress outlive their callers; on SIGTERM they get the grace period to finish and be stored.
    app.on_stop(lambda: generation.drain(app.settings.shutdown_grace_seconds))
    app.serve_package("llmlab.experiments.v1", {
        "ExperimentService": ExperimentServicer(experiments, models, responses, app.events),
        "ResponseService": generation,
    })


SPEC = ServiceSpec(
    name="experiments",
    setup=setup,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
