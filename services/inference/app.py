"""Wiring of the inference service: registry, model manager (engines and remote backends), servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .batches.calls import Calls
from .batches.repository import BatchRepository
from .batches.servicer import BatchServicer
from .engine.metrics import EngineCollector
from .internal.servicer import InferenceServicer
from .models.manager import ModelManager
from .models.registry import ModelRegistry
from .models.servicer import ModelServicer
from .moderation.service import Moderations
from .native.servicer import NativeServicer
from .openai.servicer import OpenAIServicer
from .settings import InferenceSettings
from .training.service import training_servicers
from .usage import UsageRecorder


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    settings = app.settings
    assert isinstance(settings, InferenceSettings)
    models = ModelManager(ModelRegistry(app.db), settings)
    await models.start()
    app.on_stop(models.stop)
    app.metrics.registry.register(
        EngineCollector(lambda: [(m.record.id, m.engine.stats()) for m in list(models.loaded.values())])
    )
    usage = UsageRecorder(app)
    moderations = Moderations(models)
    app.background(moderations.warm, "moderation-classifier")
    app.serve_package(
        "llmlab.inference.v1",
        {
            "OpenAIService": OpenAIServicer(models, usage, moderations),
            "NativeService": NativeServicer(models, usage),
            "InferenceService": InferenceServicer(models, usage),
            "ModelService": ModelServicer(models, usage),
            **training_servicers(app, models),
            "BatchService": BatchServicer(BatchRepository(app.db),
                                          Calls(app.channel("files"), app.channel("inference")), app.events),
        },
    )


SPEC = ServiceSpec(
    name="inference",
    setup=setup,
    settings_cls=InferenceSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
