"""Sweeps as durable jobs (docs/sweeps.md): creation queues one work item per combination on the priority's Redis
stream; workers (`python -m services.experiments.worker`) claim items, generate every missing response of the
combination at once (so the engine batches them) with its deterministic seed, store each at most once (the unique
key experiment, combination, iteration), score it, and complete the sweep when its last response is stored.

Durability: an item is acked only after its combination is stored. A killed worker's item stays pending and another
worker reclaims it after sweep_claim_idle_ms (XAUTOCLAIM); it regenerates only the iterations not stored yet (and
rescores stored ones the killed worker had not scored). An item whose generations keep failing is retried until its
sweep_max_deliveries-th delivery, then its missing responses are stored as failed and it goes to the dead-letter
stream, so the sweep still ends. A sweep created while the queue was unreachable, or whose creator died before
confirming its items, is queued again by the workers (requeue_unqueued)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import grpc
import structlog

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.pricing import generation_cost
from llmlab.runtime import DomainError, Unavailable, validation_error
from llmlab.runtime.errors import HTTP_STATUS
from llmlab.runtime.streams import EventPublisher, PriorityConsumer, StreamMessage

from . import sweeps
from .generation import GENERATION_TIMEOUT_SECONDS, Peers, Prices, Subject, _error, publish_created, score
from .response_repository import Outcome, ResponseRepository
from .settings import ExperimentsSettings
from .sweep_repository import Existing, SweepRepository, SweepRow

log = structlog.get_logger(__name__)

CANCEL_POLL_SECONDS = 1.0
REQUEUE_AFTER_SECONDS = 60.0


class ItemFailed(Exception):
    """Some generations of a work item failed; the item is retried (or, at its last delivery, dead-lettered)."""


async def enqueue(queue: EventPublisher, row: SweepRow, combination_ids: list[int] | None = None) -> None:
    ids = combination_ids if combination_ids is not None else list(range(1, row.total_combinations + 1))
    for cid in ids:
        await queue.publish(sweeps.queue_name(row.priority), sweeps.EVENT,
                            {"sweep_id": row.id, "combination_id": cid})


async def estimate(repo: SweepRepository, settings: ExperimentsSettings, new: sweeps.NewSweep,
                   prices: Prices) -> tuple[float, float, float]:
    """(cost USD, seconds, tokens/s used): cost at the model's prices for the prompt (estimated at CHARS_PER_TOKEN)
    and max_tokens per response; seconds from the engine's measured throughput (SweepRepository.throughput) over
    total_responses x max_tokens, or the configured fallback while nothing recent was generated."""
    max_tokens = int(new.grid.fixed["max_tokens"])
    tps, measured = await repo.throughput()
    if measured == 0 or tps <= 0:
        tps = settings.sweep_fallback_tokens_per_second
    per = generation_cost(sweeps.estimate_prompt_tokens(new.prompt), max_tokens, prices.input_per_token,
                          prices.output_per_token)
    cost = round(per * new.total_responses, 6)
    return cost, new.total_responses * max_tokens / tps, tps


async def create(repo: SweepRepository, peers: Peers, queue: EventPublisher | None, settings: ExperimentsSettings,
                 new: sweeps.NewSweep, owner: str) -> tuple[SweepRow, int]:
    """Check the model, estimate, store and queue a sweep; returns it with its queue position."""
    if queue is None:
        raise Unavailable("The sweep queue is not configured; nothing was queued", reason="QUEUE_UNAVAILABLE")
    prices = await peers.prices(new.model, unknown="is not a registered model (GET /api/models lists them)")
    max_tokens = int(new.grid.fixed["max_tokens"])
    if prices.max_output_tokens and max_tokens > prices.max_output_tokens:
        raise validation_error("parameter_grid.max_tokens", max_tokens,
                               f"must be at most {prices.max_output_tokens} for model {prices.model}")
    cost, seconds, _ = await estimate(repo, settings, new, prices)
    row = await repo.create(new, owner, cost, seconds)
    try:
        await enqueue(queue, row)
    except Exception:
        log.exception("sweep could not be queued", sweep_id=row.id)
        await repo.delete(row.id)
        raise Unavailable("The sweep queue is unavailable; nothing was queued, please retry",
                          reason="QUEUE_UNAVAILABLE") from None
    await repo.mark_enqueued(row.id)
    return row, await repo.queue_position(row.id)


class SweepWorker:
    """One worker process's handling of work items (module docstring)."""

    def __init__(self, repo: SweepRepository, responses: ResponseRepository, peers: Peers, queue: EventPublisher,
                 settings: ExperimentsSettings, client: Any, name: str) -> None:
        self.repo = repo
        self.responses = responses
        self.peers = peers
        self.queue = queue
        self.settings = settings
        self.name = name
        self.consumer = PriorityConsumer(
            client, settings.redis_prefix, [sweeps.queue_name(p) for p in sweeps.PRIORITIES], sweeps.GROUP, name,
            self.handle, concurrency=settings.sweep_worker_concurrency,
            claim_idle_ms=settings.sweep_claim_idle_ms, max_deliveries=settings.sweep_max_deliveries)

    async def requeue_unqueued(self) -> int:
        """Queue again the sweeps whose items were never confirmed on the queue (duplicates are harmless)."""
        rows = await self.repo.unqueued(REQUEUE_AFTER_SECONDS)
        for row in rows:
            await enqueue(self.queue, row)
            await self.repo.mark_enqueued(row.id)
            log.warning("sweep queued again", sweep_id=row.id)
        return len(rows)

    async def maintain(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.requeue_unqueued()
            except Exception:
                log.exception("requeue of unqueued sweeps failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REQUEUE_AFTER_SECONDS)

    async def handle(self, msg: StreamMessage) -> None:
        sweep_id, cid = int(msg.data.get("sweep_id", 0)), int(msg.data.get("combination_id", 0))
        row = await self.repo.get(sweep_id)
        if row is None or row.finished or not 1 <= cid <= row.total_combinations:
            return  # deleted, cancelled or over: the item is dropped
        if not await self.repo.start(sweep_id, cid):
            return
        log.info("sweep combination claimed", sweep_id=sweep_id, combination_id=cid, deliveries=msg.deliveries,
                 worker=self.name)
        existing = await self.repo.existing(sweep_id, cid)
        missing = [i for i in range(1, row.per_combination + 1) if i not in existing]
        unscored = [e for e in existing.values() if e.status == "completed" and not e.scored and e.content.strip()]
        errors: list[dict[str, Any]] = []
        if missing or unscored:
            try:
                prices = await self.peers.prices(row.model)
            except DomainError as exc:
                prices, errors = None, [_error(exc.message, exc.status_http, "GENERATION_FAILED")]
            if prices is not None:
                errors = await self._run(row, cid, prices, missing, unscored)
            if errors is None:  # cancelled meanwhile
                return
        if errors:
            if msg.deliveries < self.settings.sweep_max_deliveries:
                raise ItemFailed(f"{len(errors)} generation(s) of combination {cid} failed: {errors[0]['message']}")
            await self._give_up(row, cid, errors[0])
            await self.repo.finish_if_done(sweep_id)
            raise ItemFailed(f"combination {cid} failed {msg.deliveries} times; moved to the dead-letter stream")
        await self.repo.finish_if_done(sweep_id)

    async def _run(self, row: SweepRow, cid: int, prices: Prices, missing: list[int],
                   unscored: list[Existing]) -> list[dict[str, Any]] | None:
        """Generate the missing iterations and rescore the unscored ones, all at once; the errors (None: the sweep
        was cancelled meanwhile, the generations in flight were stopped)."""
        run_id = str(uuid.uuid4())
        tasks = [asyncio.create_task(self._generate(row, cid, i, prices, run_id)) for i in missing]
        tasks += [asyncio.create_task(self._rescore(row, e)) for e in unscored]
        cancelled = asyncio.Event()

        async def watch() -> None:
            while True:
                await asyncio.sleep(CANCEL_POLL_SECONDS)
                if await self.repo.status(row.id) == "cancelled":
                    cancelled.set()
                    for t in tasks:
                        t.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            results = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if cancelled.is_set():
            return None
        errors = []
        for r in results:
            if isinstance(r, BaseException):
                if isinstance(r, asyncio.CancelledError):
                    raise r
                log.error("sweep response failed", sweep_id=row.id, combination_id=cid, error=repr(r))
                errors.append(_error("The response could not be generated or stored", 500, "GENERATION_FAILED"))
            elif r is not None:
                errors.append(r)
        return errors

    def _outcome(self, row: SweepRow, cid: int, iteration: int, model: str, run_id: str) -> Outcome:
        params = row.combinations[cid - 1]
        return Outcome(row.id, run_id, model, params, sweep_combination=cid, sweep_iteration=iteration,
                       seed=sweeps.response_seed(row.seed, cid, iteration))

    async def _generate(self, row: SweepRow, cid: int, iteration: int, prices: Prices,
                        run_id: str) -> dict[str, Any] | None:
        o = self._outcome(row, cid, iteration, prices.model, run_id)
        p = o.parameters
        started = time.perf_counter()
        try:
            reply = await self.peers.inference.Generate(inf.GenerateRequest(
                model=row.model, messages=[inf.ChatMessage(role="user", content=row.prompt)], user=row.owner_id,
                sampling=inf.SamplingParams(
                    temperature=p["temperature"], top_p=p["top_p"], max_tokens=int(p["max_tokens"]),
                    frequency_penalty=p["frequency_penalty"], presence_penalty=p["presence_penalty"],
                    seed=o.seed, logprobs=True),
            ), timeout=GENERATION_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            return _error(exc.details() or "generation failed", HTTP_STATUS.get(exc.code(), 502),
                          "GENERATION_FAILED", grpc_status=exc.code().name)
        choice = reply.choices[0]
        o.content, o.finish_reason = choice.text, choice.finish_reason
        o.response_time_ms = int((time.perf_counter() - started) * 1000)
        o.prompt_tokens, o.token_count = reply.usage.prompt_tokens, reply.usage.completion_tokens
        o.cost = generation_cost(o.prompt_tokens, o.token_count, prices.input_per_token, prices.output_per_token)
        stored = await self.responses.insert_once(o)
        if stored is None:
            return None  # another attempt stored this iteration first: nothing is written twice
        response_id, created_at = stored
        await publish_created(self.peers, run_id, response_id, o, "batch", row.owner_id)
        await score(self.peers, self.responses, Subject(row.id, "batch", row.prompt), response_id, created_at, o,
                    [lp.logprob for lp in choice.logprobs])
        return None

    async def _rescore(self, row: SweepRow, e: Existing) -> None:
        """Score a response a killed worker stored but did not score (without logprobs: perplexity is omitted)."""
        o = Outcome(row.id, "", row.model, e.parameters, content=e.content, finish_reason=e.finish_reason)
        await score(self.peers, self.responses, Subject(row.id, "batch", row.prompt), e.response_id, e.created_at, o,
                    [])

    async def _give_up(self, row: SweepRow, cid: int, error: dict[str, Any]) -> None:
        existing = await self.repo.existing(row.id, cid)
        for i in range(1, row.per_combination + 1):
            if i not in existing:
                o = self._outcome(row, cid, i, row.model, str(uuid.uuid4()))
                o.error = error
                await self.responses.insert_once(o)
        await self.repo.dead_lettered(row.id)
        log.error("sweep combination failed", sweep_id=row.id, combination_id=cid, error=error["message"])
