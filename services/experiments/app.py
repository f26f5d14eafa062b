"""Wiring of the experiments service: its spec, settings and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .models import ModelRegistry
from .repository import ExperimentRepository
from .servicer import ExperimentServicer


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    # The channel connects lazily: the inference service may start after this one.
    models = ModelRegistry(app.channel("inference"))
    app.serve_package(
        "llmlab.experiments.v1",
        {"ExperimentService": ExperimentServicer(ExperimentRepository(app.db), models)},
    )


SPEC = ServiceSpec(
    name="experiments",
    setup=setup,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
