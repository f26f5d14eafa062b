"""A generation run (`POST /api/responses/generate`): every planned response submitted to the inference service at
once (so the engine batches them), each stored, announced (response.created) and scored as it finishes, progress
reported on a queue. The run is a task of its own: a client that goes away stops reading, not generating."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import grpc
import structlog

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.metrics.v1 import scoring_service_pb2 as spb
from llmlab.metrics.v1 import scoring_service_pb2_grpc as spb_grpc
from llmlab.pricing import generation_cost
from llmlab.runtime import Unavailable, validation_error
from llmlab.runtime.context import principal_var
from llmlab.runtime.envelope import iso
from llmlab.runtime.errors import HTTP_STATUS, excerpt
from llmlab.runtime.streams import EventPublisher

from .events import publish_experiment
from .repository import ExperimentRow
from .response_repository import Outcome, ResponseRecord, ResponseRepository
from .responses import PlannedResponse

log = structlog.get_logger(__name__)

RESPONSES_STREAM = "responses"  # response.created here; the metrics service adds response.scored
# One generation of at most the model's output limit on a shared CPU engine; past this it counts as failed.
GENERATION_TIMEOUT_SECONDS = 900.0
SCORING_TIMEOUT_SECONDS = 30.0
LOOKUP_TIMEOUT_SECONDS = 5.0


@dataclass
class Prices:
    """A model's USD prices per token, from the registry."""

    model: str
    input_per_token: float
    output_per_token: float
    max_output_tokens: int = 0

    def check(self, planned: list[PlannedResponse]) -> None:
        """Refuse, before anything is stored, a max_tokens the model cannot generate."""
        for p in planned:
            if self.max_output_tokens and p.parameters["max_tokens"] > self.max_output_tokens:
                raise validation_error("max_tokens", p.parameters["max_tokens"],
                                       f"must be at most {self.max_output_tokens} for model {self.model}")


@dataclass
class Finished:
    """One response of the run finished: stored (record) or failed (error)."""

    done: int
    total: int
    record: ResponseRecord | None = None
    error: dict[str, Any] | None = None


@dataclass
class RunSummary:
    total_generated: int
    average_quality: float
    total_cost: float
    total_time_ms: float
    total_failed: int


@dataclass
class Ended:
    """The run's terminal state: completed (results, summary) or failed (error)."""

    status: str
    results: list[ResponseRecord] = field(default_factory=list)
    summary: RunSummary | None = None
    error: dict[str, Any] | None = None


def _error(message: str, status: int, code: str, **details: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"message": excerpt(message, 300), "statusCode": status, "code": code}
    if details:
        out["details"] = details
    return out


class Peers:
    """The inference service (model prices, generation) and the metrics service (scoring) over gRPC."""

    def __init__(self, inference: grpc.aio.Channel, metrics: grpc.aio.Channel, events: EventPublisher | None) -> None:
        self.inference = inf_grpc.InferenceServiceStub(inference)
        self.scoring = spb_grpc.ScoringServiceStub(metrics)
        self.events = events

    async def prices(self, model: str, field: str = "model",
                     unknown: str = "is no longer a registered model (GET /api/models lists them); update the "
                                    "experiment's model") -> Prices:
        """The model's record, before anything is stored: unknown -> 400 (`field`, `unknown`), registry
        unreachable -> 503."""
        try:
            found = await self.inference.GetModel(inf.GetModelRequest(id=model), timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise validation_error(field, model, unknown) from None
            raise Unavailable("The inference service cannot be reached; nothing was generated, please retry",
                              reason="INFERENCE_UNAVAILABLE") from None
        m = found.model
        return Prices(m.id, m.input_price_per_1k / 1000, m.output_price_per_1k / 1000, m.max_output_tokens)


@dataclass(frozen=True)
class Subject:
    """The experiment a scored response belongs to."""

    experiment_id: int
    experiment_type: str
    prompt: str


async def publish_created(peers: Peers, run_id: str, response_id: int, o: Outcome, experiment_type: str,
                          principal: str) -> None:
    """Announce a stored response (response.created, docs/analytics.md); a failure to publish is logged, the
    response stays stored."""
    if peers.events is None:
        return
    try:
        await peers.events.publish(RESPONSES_STREAM, "response.created", {
            "response_id": response_id, "experiment_id": o.experiment_id, "run_id": run_id, "model": o.model,
            "parameters": o.parameters, "token_count": o.token_count, "prompt_tokens": o.prompt_tokens,
            "cost": o.cost, "response_time": o.response_time_ms, "finish_reason": o.finish_reason,
            "experiment_type": experiment_type, "principal": principal,
        })
    except Exception as exc:  # the response is stored; the event stream is for analytics to catch up
        log.warning("response.created not published", response_id=response_id, error=type(exc).__name__)


async def score(peers: Peers, repo: ResponseRepository, e: Subject, response_id: int, created_at: Any, o: Outcome,
                logprobs: list[float]) -> bool:
    """Score a stored response with the metrics service and store the scores; False when it was not scored."""
    if not o.content.strip():
        return False  # nothing to score: the response stays unscored (metrics omitted)
    try:
        scored = await peers.scoring.ScoreResponse(spb.ScoreResponseRequest(input=spb.ScoringInput(
            content=o.content, prompt=e.prompt, max_tokens=int(o.parameters["max_tokens"]),
            finish_reason=o.finish_reason, token_logprobs=logprobs,
            subject=spb.ScoringSubject(response_id=response_id, experiment_id=e.experiment_id,
                                       experiment_type=e.experiment_type, model=o.model, created_at=iso(created_at)),
        )), timeout=SCORING_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as exc:
        log.warning("response not scored", response_id=response_id, status=exc.code().name)
        return False
    s = scored.result.scores
    metrics = {d: getattr(s, d) for d in ("coherence", "completeness", "readability", "creativity",
                                           "specificity", "length_appropriateness")}
    t = scored.result.text_stats
    await repo.set_scores(
        response_id, metrics, s.overall_quality,
        s.perplexity if s.HasField("perplexity") else None, s.mean_logprob if s.HasField("mean_logprob") else None,
        {"word_count": t.word_count, "type_token_ratio": t.type_token_ratio, "sentiment": t.sentiment},
    )
    return True


class Run:
    """One request's generations. `events` yields Finished per response, then one Ended."""

    def __init__(self, experiment: ExperimentRow, planned: list[PlannedResponse], prices: Prices,
                 repo: ResponseRepository, peers: Peers) -> None:
        self.experiment = experiment
        self.planned = planned
        self.prices = prices
        self.repo = repo
        self.peers = peers
        self.id = str(uuid.uuid4())
        self.events: asyncio.Queue[Finished | Ended] = asyncio.Queue()
        self._user = principal_var.get()

    async def _generate(self, p: PlannedResponse) -> tuple[ResponseRecord | None, dict[str, Any] | None]:
        e, params = self.experiment, p.parameters
        outcome = Outcome(e.id, self.id, self.prices.model, params)
        started = time.perf_counter()
        try:
            reply = await self.peers.inference.Generate(inf.GenerateRequest(
                model=e.model, messages=[inf.ChatMessage(role="user", content=e.prompt)], user=self._user,
                sampling=inf.SamplingParams(
                    temperature=params["temperature"], top_p=params["top_p"], max_tokens=int(params["max_tokens"]),
                    frequency_penalty=params["frequency_penalty"], presence_penalty=params["presence_penalty"],
                    logprobs=True),
            ), timeout=GENERATION_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            outcome.error = _error(exc.details() or "generation failed", HTTP_STATUS.get(exc.code(), 502),
                                   "GENERATION_FAILED", grpc_status=exc.code().name)
            outcome.response_time_ms = int((time.perf_counter() - started) * 1000)
            await self.repo.insert(outcome)
            await self._publish_failure(outcome)
            return None, outcome.error
        choice = reply.choices[0]
        outcome.content = choice.text
        outcome.finish_reason = choice.finish_reason
        outcome.response_time_ms = int((time.perf_counter() - started) * 1000)
        outcome.prompt_tokens = reply.usage.prompt_tokens
        outcome.token_count = reply.usage.completion_tokens
        outcome.cost = generation_cost(reply.usage.prompt_tokens, reply.usage.completion_tokens,
                                       self.prices.input_per_token, self.prices.output_per_token)
        response_id, created_at = await self.repo.insert(outcome)
        await self._publish(response_id, outcome)
        await self._score(response_id, created_at, outcome, [lp.logprob for lp in choice.logprobs])
        return await self.repo.get(response_id), None

    async def _publish(self, response_id: int, o: Outcome) -> None:
        await publish_created(self.peers, self.id, response_id, o, self.experiment.type, self._user)

    async def _publish_failure(self, o: Outcome) -> None:
        if self.peers.events is None or o.error is None:
            return
        try:
            await self.peers.events.publish(RESPONSES_STREAM, "response.failed", {
                "experiment_id": o.experiment_id, "run_id": self.id, "model": o.model,
                "experiment_type": self.experiment.type, "parameters": o.parameters,
                "status_code": o.error["statusCode"], "code": o.error["code"], "principal": self._user,
            })
        except Exception as exc:
            log.warning("response.failed not published", experiment_id=o.experiment_id, error=type(exc).__name__)

    async def _score(self, response_id: int, created_at: Any, o: Outcome, logprobs: list[float]) -> None:
        e = self.experiment
        await score(self.peers, self.repo, Subject(e.id, e.type, e.prompt), response_id, created_at, o, logprobs)

    async def _one(self, p: PlannedResponse) -> tuple[ResponseRecord | None, dict[str, Any] | None]:
        try:
            return await self._generate(p)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("generation failed", experiment_id=self.experiment.id, run_id=self.id)
            return None, _error("The response could not be generated or stored", 500, "GENERATION_FAILED")

    async def run(self) -> None:
        """Generate every planned response concurrently; report each as it finishes, then the end."""
        started = time.perf_counter()
        total = len(self.planned)
        try:
            await self.repo.set_status(self.experiment.id, "running")
            tasks = [asyncio.create_task(self._one(p)) for p in self.planned]
            stored: list[ResponseRecord] = []
            failed = 0
            for done, fut in enumerate(asyncio.as_completed(tasks), start=1):
                record, error = await fut
                if record is not None:
                    stored.append(record)
                else:
                    failed += 1
                await self.events.put(Finished(done, total, record, error))
            await self.repo.set_status(self.experiment.id, "completed" if stored else "failed")
            scored = [r.overall_quality for r in stored if r.overall_quality is not None]
            await publish_experiment(
                self.peers.events, "experiment.completed" if stored else "experiment.failed", self.experiment,
                run_id=self.id, generated=len(stored), failed=failed,
                average_quality=round(sum(scored) / len(scored), 1) if scored else None)
            if not stored:
                await self.events.put(Ended("failed", error=_error(
                    f"All {total} generations failed", 502, "GENERATION_FAILED", failed=failed)))
                return
            stored.sort(key=lambda r: r.id)
            await self.events.put(Ended("completed", results=stored, summary=RunSummary(
                total_generated=len(stored),
                average_quality=round(sum(scored) / len(scored), 1) if scored else 0.0,
                total_cost=round(sum(r.cost for r in stored), 10),
                total_time_ms=(time.perf_counter() - started) * 1000,
                total_failed=failed,
            )))
        except Exception:
            log.exception("generation run failed", experiment_id=self.experiment.id, run_id=self.id)
            try:
                await self.repo.set_status(self.experiment.id, "failed")
            finally:
                await self.events.put(Ended("failed", error=_error("The generation run failed", 500,
                                                                   "GENERATION_FAILED")))
