"""Wiring of the metrics service: its spec (a schema for stored scores, Redis for events) and servicers."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .judge import Judge
from .model_evaluations import Evaluator, ModelEvaluationRepository, ModelEvaluationServicer
from .repository import ScoreRepository
from .run_evaluation_repository import RunEvaluationRepository
from .run_evaluations import EvaluationServicer, RunEvaluationServicer
from .servicer import MetricsServicer, ScoringServicer
from .settings import MetricsSettings


async def setup(app: ServiceApp) -> None:
    assert app.db is not None
    repo = ScoreRepository(app.db)
    settings = app.settings
    assert isinstance(settings, MetricsSettings)
    # The channel connects lazily; without a judge model the inference service is never called from here.
    judge = (Judge(app.channel("inference"), settings.judge_model, settings.judge_max_tokens,
                   settings.judge_timeout_seconds) if settings.judge_model else None)
    app.serve_package("llmlab.metrics.v1", {
        "ScoringService": ScoringServicer(repo, app.events, judge),
        "MetricsService": MetricsServicer(repo),
        "EvaluationService": EvaluationServicer(
            ModelEvaluationServicer(ModelEvaluationRepository(app.db), Evaluator(app.channel("inference")),
                                    app.channel("files")),
            RunEvaluationServicer(RunEvaluationRepository(app.db), app.channel("experiments")),
        ),
    })


SPEC = ServiceSpec(
    name="metrics",
    setup=setup,
    settings_cls=MetricsSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
