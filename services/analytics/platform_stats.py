"""Model, system and platform statistics (`/api/models/{id}/stats`, `/api/system/stats`, `/api/statistics`): the
read model's totals, and the model registry asked over gRPC (never its tables)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.inference.v1 import model_service_pb2 as mpb
from llmlab.inference.v1 import model_service_pb2_grpc as mpb_grpc
from llmlab.runtime import NotFound, Unavailable

from .repository import AnalyticsRepository

LOOKUP_TIMEOUT_SECONDS = 5.0
WINDOW = dt.timedelta(days=30)
TERMINAL_OK = ("succeeded", "completed")
RUNNING = ("running", "validating_files", "queued")


@dataclass(frozen=True)
class ModelStats:
    total_requests: int
    average_quality: float
    average_response_time: float
    total_cost: float
    success_rate: float


def _unavailable() -> Unavailable:
    return Unavailable("The model registry cannot be reached, please retry", reason="INFERENCE_UNAVAILABLE")


class PlatformStats:
    def __init__(self, repo: AnalyticsRepository, inference: grpc.aio.Channel) -> None:
        self._repo = repo
        self._inference = inf_grpc.InferenceServiceStub(inference)
        self._models = mpb_grpc.ModelServiceStub(inference)

    @staticmethod
    def unknown_model(model: str) -> NotFound:
        return NotFound(f"Model {model} not found", reason="MODEL_NOT_FOUND", details={"model_id": model})

    async def model_exists(self, model: str) -> bool:
        try:
            await self._inference.GetModel(inf.GetModelRequest(id=model), timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise _unavailable() from None
        return True

    async def model(self, model: str) -> ModelStats:
        if not await self.model_exists(model):
            raise self.unknown_model(model)
        r = await self._repo.model_totals(model)
        attempts = r["requests"] + r["failures"]
        return ModelStats(
            total_requests=r["requests"],
            average_quality=round(r["quality_sum"] / r["scored"], 1) if r["scored"] else 0.0,
            average_response_time=round(r["latency_ms"] / r["requests"], 1) if r["requests"] else 0.0,
            total_cost=round(r["cost"], 6),
            success_rate=round(r["requests"] / attempts * 100, 1) if attempts else 0.0,
        )

    async def system(self, now: dt.datetime) -> dict:
        since = now - WINDOW
        r = await self._repo.system_totals(since)
        attempts = r["requests"] + r["failures"]
        # Uptime over the window, or since the first recorded request when the platform is younger than it.
        start = max(since, r["first_hour"]) if r["first_hour"] is not None else now
        minutes = max(1, int((now - start).total_seconds() // 60))
        uptime = 100.0 * (1 - min(r["failed_minutes"], minutes) / minutes)
        return {
            "usage": {"total_experiments": r["experiments"], "total_responses": r["responses"],
                      "total_cost": round(r["cost"], 6), "active_users": r["users"]},
            "performance": {
                "average_response_time": round(r["latency_ms"] / r["requests"], 1) if r["requests"] else 0.0,
                "success_rate": round(r["requests"] / attempts * 100, 1) if attempts else 0.0,
                "uptime": f"{uptime:.1f}%"},
            "generations": r["generations"],
        }

    async def statistics(self) -> dict:
        try:
            models = await self._models.ListLabModels(mpb.ListLabModelsRequest(), timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError:
            raise _unavailable() from None
        jobs = await self._repo.job_counts()
        system = await self._repo.system_totals(dt.datetime.now(dt.UTC) - WINDOW)

        def count(kind: str, statuses: tuple[str, ...] | None = None) -> int:
            return sum(n for (k, s), n in jobs.items() if k == kind and (statuses is None or s in statuses))

        return {"total_models": len(models.data.models), "total_training_jobs": count("training"),
                "running_training_jobs": count("training", RUNNING),
                "completed_training_jobs": count("training", TERMINAL_OK),
                "total_evaluations": count("evaluation"), "total_generations": system["generations"]}
