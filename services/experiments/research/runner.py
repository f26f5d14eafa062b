"""Research runs on the worker queue (docs/research.md "Runs"): `POST /experiments/{id}/runs` stores a `pending` run
and queues `run.created` on the `research-runs` stream; a worker process claims it, samples the datasets, renders
every row through every template, generates with every model (concurrently, so the engine batches), stores each
generation once, measures the run and records its evaluation with the metrics service.

Durable: a worker killed mid-run leaves its message pending; another member reclaims it (XAUTOCLAIM) once the run's
heartbeat is stale and resumes it, skipping the generations already stored (nothing lost, nothing generated twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import asyncpg
import grpc
import structlog

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.pricing import generation_cost
from llmlab.runtime import FailedPrecondition, ServiceApp
from llmlab.runtime.context import principal_var
from llmlab.runtime.errors import excerpt
from llmlab.runtime.streams import StreamConsumer, StreamMessage

from ..settings import ExperimentsSettings
from .measures import Reference, run_metrics, scored, summary
from .peers import Peers
from .plan import Generation, Plan, prepare
from .repository import OutputRow, ResearchRepository, RunRow
from .servicer import RUNS_QUEUE

log = structlog.get_logger(__name__)

GROUP = "research-runners"
GENERATION_TIMEOUT_SECONDS = 900.0
MAX_DELIVERIES = 5
DEFAULT_MAX_TOKENS = 256


def _seed(random_seed: int | None, row_index: int) -> int | None:
    """Each row's own sampling seed, derived from the run's: the same seed, the same generations."""
    return None if random_seed is None else (random_seed * 1_000_003 + row_index) % 2**31


class RunExecutor:
    """Executes one claimed run."""

    def __init__(self, repo: ResearchRepository, peers: Peers, concurrency: int) -> None:
        self._repo = repo
        self._peers = peers
        self._concurrency = concurrency

    async def _generate(self, run: RunRow, plan: Plan, g: Generation, gate: asyncio.Semaphore) -> None:
        p = plan.parameters
        sampling = inf.SamplingParams(max_tokens=int(p.get("max_tokens", DEFAULT_MAX_TOKENS)))
        for name in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            if name in p:
                setattr(sampling, name, float(p[name]))
        if "top_k" in p:
            sampling.top_k = int(p["top_k"])
        seed = _seed(plan.seed, g.row_index)
        if seed is not None:
            sampling.seed = seed
        out = OutputRow(g.key, g.model.uuid, g.template_id, g.row_index, "", g.reference, 0.0, 0, 0, 0.0, None)
        async with gate:
            started = time.perf_counter()
            try:
                reply = await self._peers.inference.Generate(inf.GenerateRequest(
                    model=g.model.slug, messages=[inf.ChatMessage(role="user", content=g.prompt)],
                    sampling=sampling, user=run.principal), timeout=GENERATION_TIMEOUT_SECONDS)
                out.latency_ms = (time.perf_counter() - started) * 1000
                out.output = reply.choices[0].text if reply.choices else ""
                out.prompt_tokens = reply.usage.prompt_tokens
                out.completion_tokens = reply.usage.completion_tokens
                out.cost_usd = generation_cost(out.prompt_tokens, out.completion_tokens, g.model.input_per_token,
                                               g.model.output_per_token)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    raise  # the engine is away: the attempt stops, the message is retried
                out.latency_ms = (time.perf_counter() - started) * 1000
                out.error = excerpt(f"{exc.code().name}: {exc.details() or 'generation failed'}", 300)
        await self._repo.add_output(run.id, out, g.prompt)

    async def _reference(self, plan: Plan, outputs: list[OutputRow]) -> Reference | None:
        measured = scored(outputs)
        if not measured or not any(m in plan.metrics for m in ("accuracy", "bleu", "rouge")):
            return None
        r = await self._peers.reference_metrics([o.output for o in measured], [o.reference or "" for o in measured])
        return Reference([s.accuracy if s.HasField("accuracy") else 0.0 for s in r.samples],
                         r.bleu if r.HasField("bleu") else None, r.rouge_l if r.HasField("rouge_l") else None)

    async def execute(self, run: RunRow) -> None:
        try:
            plan = await prepare(run.config, self._peers, self._repo, "run")
        except FailedPrecondition as exc:  # the data changed since the run was accepted
            await self._repo.finish_run(run.id, "failed", exc.message, attempt=run.attempt)
            return
        generations = plan.generations()
        await self._repo.set_total(run.id, len(generations))
        stored = {o.sample_key for o in await self._repo.outputs(run.id)}
        todo = [g for g in generations if g.key not in stored]
        log.info("research run executing", run_id=run.id, attempt=run.attempt, total=len(generations),
                 resumed=len(stored))
        gate = asyncio.Semaphore(self._concurrency)
        tasks = [asyncio.create_task(self._generate(run, plan, g, gate)) for g in todo]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
        outputs = await self._repo.outputs(run.id)
        failed = [o for o in outputs if o.error]
        if len(failed) == len(outputs):
            await self._repo.finish_run(run.id, "failed", f"All {len(outputs)} generations failed; the first: "
                                        f"{failed[0].error}" if failed else "Nothing was generated",
                                        summary(outputs, None, plan.metrics, len(plan.rows)), run.attempt)
            return
        ref = await self._reference(plan, outputs)
        metrics = run_metrics(outputs, ref, plan.metrics)
        result = summary(outputs, ref, plan.metrics, len(plan.rows))
        evaluation = await self._peers.evaluate(run.experiment_id, run.id, metrics, {
            "evaluator": "llmlab research runner", "samples": len(plan.rows), "generations": len(outputs),
            "failed": len(failed), "random_seed": plan.seed, "answer_field": plan.answer_field})
        result["metrics"] = metrics
        result["evaluation_id"] = evaluation.id
        await self._repo.finish_run(run.id, "completed", None, result, run.attempt)
        log.info("research run completed", run_id=run.id, generations=len(outputs), failed=len(failed))


class ResearchRunWorker:
    """A member of the research-runs consumer group: one run at a time."""

    def __init__(self, repo: ResearchRepository, peers: Peers, client: Any, prefix: str, name: str,
                 settings: ExperimentsSettings) -> None:
        self._repo = repo
        self._executor = RunExecutor(repo, peers, settings.research_run_concurrency)
        self._claim_idle_ms = settings.research_run_claim_idle_ms
        self.consumer = StreamConsumer(client, prefix, RUNS_QUEUE, GROUP, name, self.handle, batch=1,
                                       claim_idle_ms=self._claim_idle_ms, max_deliveries=MAX_DELIVERIES)

    @property
    def stale_seconds(self) -> float:
        return self._claim_idle_ms / 1000

    async def _beat(self, run: RunRow, msg: StreamMessage) -> None:
        while True:
            await asyncio.sleep(self._claim_idle_ms / 3000)
            with contextlib.suppress(Exception):
                await self.consumer.touch(msg.id)
                await self._repo.heartbeat(run.id, run.attempt)

    async def handle(self, msg: StreamMessage) -> None:
        run_id = str(msg.data.get("run_id", ""))
        run = await self._repo.claim_run(run_id, self.stale_seconds)
        if run is None:
            return  # ended, deleted with its experiment, or alive in another worker
        beat = asyncio.create_task(self._beat(run, msg))
        token = principal_var.set(run.principal)  # datasets and models are read as the run's creator
        try:
            await self._executor.execute(run)
        except asyncpg.ForeignKeyViolationError:
            log.info("research run's experiment was deleted", run_id=run_id)
        except Exception as exc:
            if msg.deliveries >= MAX_DELIVERIES:
                await self._repo.finish_run(run.id, "failed", f"The run failed {msg.deliveries} times; the last "
                                            f"error: {excerpt(str(exc) or type(exc).__name__, 300)}")
            else:  # leave it claimable at once for the retry
                await self._repo.heartbeat_expire(run.id, run.attempt)
            raise
        finally:
            principal_var.reset(token)
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat


async def setup_research_runs(app: ServiceApp) -> None:
    """The experiments worker's hook: consume research runs (and queue again the runs left pending)."""
    assert app.db is not None and app.redis is not None and app.events is not None
    assert isinstance(app.settings, ExperimentsSettings)
    repo = ResearchRepository(app.db)
    peers = Peers(app.channel("inference"), app.channel("files"), app.channel("metrics"))
    worker = ResearchRunWorker(repo, peers, app.redis, app.settings.redis_prefix,
                               f"{socket.gethostname()}-{os.getpid()}", app.settings)
    await worker.consumer.ensure_group()
    for run_id in await repo.pending_runs():  # a run whose message was lost between its insert and its queueing
        await app.events.publish(RUNS_QUEUE, "run.created", {"run_id": run_id})
    app.background(worker.consumer.run, "research-runs")
