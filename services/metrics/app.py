"""Wiring of the metrics service: its spec (a schema for stored scores, Redis for events) and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .repository import ScoreRepository
from .servicer import MetricsServicer, ScoringServicer


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    repo = ScoreRepository(app.db)
    app.serve_package("llmlab.metrics.v1", {
        "ScoringService": ScoringServicer(repo, app.events),
        "MetricsService": MetricsServicer(repo),
    })


SPEC = ServiceSpec(
    name="metrics",
    setup=setup,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
