"""The training servicers as the inference service serves them (app.py): one TrainingJobs behind both families."""

from __future__ import annotations

from typing import Any

from llmlab.runtime import ServiceApp

from ..models.registry import ModelRegistry
from .jobs import TrainingJobs
from .lab_servicer import TrainingServicer
from .openai_servicer import FineTuningServicer
from .repository import TrainingRepository


def training_servicers(app: ServiceApp, registry: ModelRegistry) -> dict[str, Any]:
    assert app.db is not None
    jobs = TrainingJobs(TrainingRepository(app.db), registry, app.events, app.channel("files"))
    return {"TrainingService": TrainingServicer(jobs), "FineTuningService": FineTuningServicer(jobs)}
