"""Wiring of the experiments service: its spec, settings and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .batch_servicer import BatchExperimentServicer
from .generation import Peers
from .models import ModelRegistry
from .repository import ExperimentRepository
from .research.peers import Peers as ResearchPeers
from .research.repository import ResearchRepository
from .research.servicer import PromptServicer, ResearchExperimentServicer
from .response_repository import ResponseRepository
from .responses_servicer import ResponseServicer
from .servicer import ExperimentServicer
from .settings import ExperimentsSettings
from .sweep_repository import SweepRepository


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    # Channels connect lazily: the inference and metrics services may start after this one.
    models = ModelRegistry(app.channel("inference"))
    experiments, responses = ExperimentRepository(app.db), ResponseRepository(app.db)
    peers = Peers(app.channel("inference"), app.channel("metrics"), app.events)
    generation = ResponseServicer(experiments, responses, peers)
    assert isinstance(app.settings, ExperimentsSettings)
    # Runs in progress outlive their callers; on SIGTERM they get the grace period to finish and be stored.
    app.on_stop(lambda: generation.drain(app.settings.shutdown_grace_seconds))
    research = ResearchRepository(app.db)
    research_peers = ResearchPeers(app.channel("inference"), app.channel("files"), app.channel("metrics"))
    app.serve_package("llmlab.experiments.v1", {
        "ExperimentService": ExperimentServicer(experiments, models, responses, app.events),
        "ResponseService": generation,
        "BatchExperimentService": BatchExperimentServicer(SweepRepository(app.db), peers, app.settings),
        "ResearchExperimentService": ResearchExperimentServicer(research, research_peers, app.events),
        "PromptService": PromptServicer(research),
    })


SPEC = ServiceSpec(
    name="experiments",
    setup=setup,
    settings_cls=ExperimentsSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
