"""The experiment lifecycle events (experiment.created/completed/failed) on the `experiments` stream, for analytics
(docs/analytics.md "Event catalogue"). Publishing never fails the request: the store is the source of truth."""

from __future__ import annotations

from typing import Any

import structlog

from llmlab.runtime.context import principal_var
from llmlab.runtime.streams import EventPublisher

from .repository import ExperimentRow

log = structlog.get_logger(__name__)

EXPERIMENTS_STREAM = "experiments"


async def publish_experiment(events: EventPublisher | None, event_type: str, row: ExperimentRow,
                             **extra: Any) -> None:
    if events is None:
        return
    try:
        await events.publish(EXPERIMENTS_STREAM, event_type, {
            "experiment_id": row.id, "name": row.name, "type": row.type, "model": row.model,
            "principal": principal_var.get(), **extra,
        })
    except Exception as exc:
        log.warning("experiment event not published", event=event_type, experiment_id=row.id,
                    error=type(exc).__name__)
