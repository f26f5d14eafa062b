"""Settings of the metrics service (`LLMLAB_METRICS_<NAME>`): the optional LLM judge."""

from __future__ import annotations

import dataclasses

from llmlab.runtime import ServiceSettings


@dataclasses.dataclass(frozen=True)
class MetricsSettings(ServiceSettings):
    """Without a judge model the measured scores stand alone; with one, stored scores get a rubric score beside them."""

    # A registered model id (GET /api/models), e.g. an OpenAI-compatible upstream; empty: no judge.
    judge_model: str = ""
    judge_max_tokens: int = 600
    judge_timeout_seconds: float = 60.0
