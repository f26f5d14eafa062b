"""The training servicers as the inference service serves them (app.py): one TrainingJobs behind both families, and
the fine-tuned models this replica serves from its start (docs/training.md)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from llmlab.runtime import ServiceApp

from ..artifacts import find_cached
from ..models.manager import ModelManager
from .jobs import TrainingJobs
from .lab_servicer import TrainingServicer
from .openai_servicer import FineTuningServicer
from .repository import TrainingRepository

log = structlog.get_logger(__name__)


def training_servicers(app: ServiceApp, models: ModelManager) -> dict[str, Any]:
    assert app.db is not None
    jobs = TrainingJobs(TrainingRepository(app.db), models.registry, app.events, app.channel("files"))
    if models.settings.load_on_start:
        app.background(lambda stop: load_fine_tuned(models), "fine-tuned-models")
    return {"TrainingService": TrainingServicer(jobs), "FineTuningService": FineTuningServicer(jobs)}


async def load_fine_tuned(models: ModelManager) -> None:
    """Load every registered fine-tuned model whose artifact this replica's cache holds: a replica started after a job
    finished serves its model too (the worker asks only the replica it reaches to load it)."""
    for record in await models.registry.list():
        if record.backend != "onnx" or "fine_tuning_job" not in record.config or record.id in models.loaded:
            continue
        if await asyncio.to_thread(find_cached, record.id, models.cache_dir) is None:
            continue
        try:
            await models.load(record.id)
        except Exception:
            log.warning("fine-tuned model not loaded", model=record.id, exc_info=True)
