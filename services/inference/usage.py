"""Every generation's usage, published as a `usage.recorded` event for analytics, billing and token rate limits."""

from __future__ import annotations

import structlog

from llmlab.pricing import generation_cost
from llmlab.runtime import ServiceApp
from llmlab.runtime.context import current_request_id, principal_var

from .domain import GenerationEvent, Usage
from .models.registry import ModelRecord

log = structlog.get_logger(__name__)

USAGE_STREAM = "usage"


class UsageRecorder:
    """Observes model_inference_seconds and publishes one event per finished request (all its choices)."""

    def __init__(self, app: ServiceApp) -> None:
        self._app = app

    async def record(
        self,
        *,
        endpoint: str,
        model: ModelRecord,
        backend: str,
        finals: list[GenerationEvent],
        latency_ms: float,
    ) -> Usage:
        prompt = max((e.usage.prompt_tokens for e in finals if e.usage), default=0)
        completion = sum(e.usage.completion_tokens for e in finals if e.usage)
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion)
        ttfts = [e.time_to_first_token_ms for e in finals if e.time_to_first_token_ms is not None]
        self._app.metrics.model_inference_seconds.labels(model.id, backend).observe(latency_ms / 1000)
        event = {
            "request_id": current_request_id(),
            "principal": principal_var.get(),
            "endpoint": endpoint,
            "model": model.id,
            "backend": backend,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "latency_ms": round(latency_ms, 3),
            "time_to_first_token_ms": round(min(ttfts), 3) if ttfts else None,
            "choices": len(finals),
            "finish_reasons": [e.finish_reason for e in finals],
            "cost": generation_cost(usage.prompt_tokens, usage.completion_tokens, model.input_cost_per_token,
                                    model.output_cost_per_token),
        }
        if self._app.events is not None:
            try:
                await self._app.events.publish(USAGE_STREAM, "usage.recorded", event)
            except Exception as exc:  # usage must never fail the answer the client already has
                log.warning("usage event not published", error=type(exc).__name__, request_id=event["request_id"])
        return usage
