"""Sweeps on real workers (docs/sweeps.md): in-process inference (the real embedded model), metrics and experiments
services on port 0, real Postgres and Redis, and real `python -m services.experiments.worker` processes. A worker
SIGKILLed mid-sweep loses its item to another, which completes the sweep with every response exactly once; two
workers share one sweep; a restart of the whole platform mid-sweep resumes it; the same seed gives the same texts;
cancel drops what is queued and keeps what is stored."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import sys
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from llmlab.devstack import free_port
from llmlab.experiments.v1 import batch_experiments_service_pb2 as pb
from llmlab.experiments.v1 import batch_experiments_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.experiments.app import SPEC as EXPERIMENTS
from services.experiments.settings import ExperimentsSettings
from services.inference.app import SPEC as INFERENCE
from services.inference.artifacts import find_cached
from services.inference.settings import InferenceSettings
from services.metrics.app import SPEC as METRICS

from .conftest import start_app

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = "smollm2-135m-instruct"
CLAIM_IDLE_MS = 1500
GRID = {"temperature": {"min": 0.5, "max": 1.0, "step": 0.5}, "top_p": {"min": 0.8, "max": 0.9, "step": 0.1},
        "max_tokens": 8}


class Worker:
    """One worker process and its output lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        assert self.proc.stdout is not None
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 90)).decode()
            assert line, f"worker exited: {''.join(self.lines)}"
            self.lines.append(line)
            if line.startswith("LLMLAB_READY"):
                break
        self._drain = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode())

    def claimed(self) -> list[dict]:
        out = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == "sweep combination claimed":
                    out.append(entry)
        return out

    async def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert await self.proc.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._drain, 5)


@pytest.fixture
async def lab(database_url, redis_url, schema, redis_prefix, monkeypatch) -> AsyncIterator[dict]:
    if find_cached(MODEL) is None:
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail(f"the embedded model {MODEL} is not imported")
        pytest.skip(f"the embedded model {MODEL} is not imported")
    settings = load_settings(InferenceSettings, INFERENCE.name, environ={}, port=0, database_url=database_url,
                             redis_url=redis_url, db_schema=f"{schema}_inference", redis_prefix=redis_prefix,
                             shutdown_grace_seconds=1.0)
    apps: dict[str, ServiceApp] = {"inference": ServiceApp(INFERENCE, settings)}
    workers: list[Worker] = []
    exp_schema = f"{schema}_experiments"

    async def start_experiments() -> ServiceApp:
        s = load_settings(ExperimentsSettings, "experiments", environ={}, port=0, database_url=database_url,
                          redis_url=redis_url, db_schema=exp_schema, redis_prefix=redis_prefix,
                          shutdown_grace_seconds=1.0)
        app = ServiceApp(EXPERIMENTS, s)
        await app.start()
        apps["experiments"] = app
        return app

    try:
        await apps["inference"].start()
        apps["metrics"] = await start_app(METRICS, database_url, redis_url, f"{schema}_metrics", redis_prefix)
        for peer in ("inference", "metrics"):
            monkeypatch.setenv(f"LLMLAB_{peer.upper()}_TARGET", f"127.0.0.1:{apps[peer].port}")
        await start_experiments()
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("gen", "libs", ".")),
            "PYTHONUNBUFFERED": "1",
            "LLMLAB_DATABASE_URL": database_url, "LLMLAB_REDIS_URL": redis_url,
            "LLMLAB_EXPERIMENTS_DB_SCHEMA": exp_schema, "LLMLAB_REDIS_PREFIX": redis_prefix,
            "LLMLAB_EXPERIMENTS_SWEEP_CLAIM_IDLE_MS": str(CLAIM_IDLE_MS),
            "LLMLAB_EXPERIMENTS_WORKER_PORT": "0", "LLMLAB_LOG_FORMAT": "json", "LLMLAB_SHUTDOWN_GRACE_SECONDS": "1",
            "LLMLAB_INFERENCE_TARGET": f"127.0.0.1:{apps['inference'].port}",
            "LLMLAB_METRICS_TARGET": f"127.0.0.1:{apps['metrics'].port}",
        }

        async def start_worker(concurrency: int = 1, **extra: str) -> Worker:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "services.experiments.worker", cwd=ROOT,
                env={**env, "LLMLAB_EXPERIMENTS_SWEEP_WORKER_CONCURRENCY": str(concurrency), **extra},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            w = Worker(proc)
            workers.append(w)
            await w.ready()
            return w

        yield {"apps": apps, "start_worker": start_worker, "start_experiments": start_experiments}
    finally:
        for w in workers:
            await w.stop()
        for app in reversed(list(apps.values())):
            await app.stop()


def stub(app: ServiceApp) -> tuple[grpc.aio.Channel, pb_grpc.BatchExperimentServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    return channel, pb_grpc.BatchExperimentServiceStub(channel)


async def create(s: pb_grpc.BatchExperimentServiceStub, per: int = 2, seed: int | None = None,
                 grid: dict | None = None) -> pb.BatchExperimentCreated:
    g = struct_pb2.Struct()
    g.update(grid or GRID)
    req = pb.CreateBatchExperimentRequest(name="sweep", prompt="Name a colour.", model=MODEL, parameter_grid=g,
                                          responses_per_combination=per)
    if seed is not None:
        req.seed = seed
    return (await s.CreateBatchExperiment(req)).data.batch_experiment


async def wait_for(check, seconds: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def finished(s: pb_grpc.BatchExperimentServiceStub, sweep_id: int) -> pb.BatchExperimentStatus | None:
    b = (await s.GetBatchExperiment(pb.GetBatchExperimentRequest(id=sweep_id))).data.batch_experiment
    return b if b.status in ("completed", "failed", "cancelled") else None


async def keys(app: ServiceApp, sweep_id: int) -> list[tuple[int, int, str, int]]:
    assert app.db is not None
    rows = await app.db.fetch("SELECT sweep_combination, sweep_iteration, status, seed FROM responses "
                              "WHERE experiment_id = $1 ORDER BY 1, 2", sweep_id)
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def claimed_by(w: Worker, sweep_id: int) -> list[int]:
    return [e["combination_id"] for e in w.claimed() if e["sweep_id"] == sweep_id]


async def test_a_killed_worker_s_combination_is_completed_by_another_exactly_once(lab):
    a, b = await lab["start_worker"](), await lab["start_worker"]()
    channel, s = stub(lab["apps"]["experiments"])
    async with channel:
        created = await create(s)
        assert (created.status, created.total_combinations, created.total_responses) == ("queued", 4, 8)
        victim = await wait_for(lambda: asyncio.sleep(0, next((w for w in (a, b) if claimed_by(w, created.id)),
                                                              None)), 60, "a worker to claim a combination")
        survivor = b if victim is a else a
        await victim.kill()
        lost = claimed_by(victim, created.id)
        done = await wait_for(lambda: finished(s, created.id), 180, "the sweep to finish")
        assert done.status == "completed", done
        assert done.progress.completed_responses == 8 and done.progress.percentage == 100
        got = await keys(lab["apps"]["experiments"], created.id)
        # Every (combination, iteration) exactly once, all generated, each with its own seed.
        assert [(c, i) for c, i, _, _ in got] == [(c, i) for c in range(1, 5) for i in (1, 2)]
        assert {st for _, _, st, _ in got} == {"completed"}
        assert len({seed for *_, seed in got}) == 8
        # The killed worker's combination was taken over (reclaimed) by the survivor.
        assert set(lost) <= set(claimed_by(survivor, created.id))
        # Both workers took part before the kill; the survivor finished the rest.
        assert survivor.proc.returncode is None


async def test_two_workers_share_a_sweep_and_the_same_seed_gives_the_same_texts(lab):
    a, b = await lab["start_worker"](), await lab["start_worker"]()
    app = lab["apps"]["experiments"]
    channel, s = stub(app)
    async with channel:
        first = await create(s, per=2, seed=1234)
        await wait_for(lambda: finished(s, first.id), 180, "the first sweep")
        assert claimed_by(a, first.id) and claimed_by(b, first.id)  # both took combinations of one sweep
        assert sorted(claimed_by(a, first.id) + claimed_by(b, first.id)) == [1, 2, 3, 4]
        second = await create(s, per=2, seed=1234)
        assert second.seed == 1234
        await wait_for(lambda: finished(s, second.id), 180, "the second sweep")
        texts = [await app.db.fetch("SELECT sweep_combination, sweep_iteration, seed, content FROM responses "
                                    "WHERE experiment_id = $1 ORDER BY 1, 2", x.id) for x in (first, second)]
        assert [tuple(r) for r in texts[0]] == [tuple(r) for r in texts[1]]
        assert len({r["content"] for r in texts[0]}) > 1  # different seeds, parameters: not one canned text
        results = (await s.GetBatchExperimentResults(pb.GetBatchExperimentResultsRequest(
            id=first.id, sort_by="combination_id"))).data
        assert [c.combination_id for c in results.results] == [1, 2, 3, 4]
        assert [r.seed for r in results.results[0].responses] == [texts[0][0]["seed"], texts[0][1]["seed"]]


async def test_a_restart_of_the_whole_platform_mid_sweep_resumes_it(lab):
    w = await lab["start_worker"]()
    app = lab["apps"]["experiments"]
    channel, s = stub(app)
    async with channel:
        created = await create(s)
        await wait_for(lambda: asyncio.sleep(0, claimed_by(w, created.id)), 60, "the worker to start the sweep")
    # Everything stops at once: the worker is killed, the experiments service goes down.
    await w.kill()
    await app.stop()
    app = await lab["start_experiments"]()
    before = await keys(app, created.id)
    assert len(before) < 8
    await lab["start_worker"]()
    channel, s = stub(app)
    async with channel:
        done = await wait_for(lambda: finished(s, created.id), 180, "the resumed sweep to finish")
        assert done.status == "completed"
    got = await keys(app, created.id)
    assert [(c, i) for c, i, _, _ in got] == [(c, i) for c in range(1, 5) for i in (1, 2)]
    assert [k for k in got if k in before] == before  # what was stored before the restart was kept as it was


async def test_cancel_drops_queued_work(lab):
    app = lab["apps"]["experiments"]
    channel, s = stub(app)
    async with channel:
        created = await create(s, per=1)
        cancelled = (await s.CancelBatchExperiment(pb.CancelBatchExperimentRequest(id=created.id))).data
        assert cancelled.batch_experiment.status == "cancelled"
        w = await lab["start_worker"](concurrency=4)
        await asyncio.sleep(CLAIM_IDLE_MS / 1000 * 2)
        assert await keys(app, created.id) == [] and claimed_by(w, created.id) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await s.CancelBatchExperiment(pb.CancelBatchExperimentRequest(id=created.id + 1000))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        listed = (await s.ListBatchExperiments(pb.ListBatchExperimentsRequest())).data.batch_experiments
        item = json_format.MessageToDict(listed[0], preserving_proto_field_name=True,
                                         always_print_fields_with_no_presence=True)
        assert item["status"] == "cancelled" and item["progress"] == 0 and item["completed_at"]


async def test_an_item_that_keeps_failing_is_dead_lettered_and_the_sweep_still_ends(lab, redis_prefix):
    # This worker's engine is unreachable: every delivery of every item fails.
    w = await lab["start_worker"](concurrency=4, LLMLAB_INFERENCE_TARGET=f"127.0.0.1:{free_port()}",
                                  LLMLAB_EXPERIMENTS_SWEEP_MAX_DELIVERIES="2")
    app = lab["apps"]["experiments"]
    channel, s = stub(app)
    async with channel:
        created = await create(s, per=1, grid={"temperature": {"min": 0.5, "max": 1.0, "step": 0.5},
                                               "max_tokens": 8})
        done = await wait_for(lambda: finished(s, created.id), 60, "the sweep to end")
        assert done.status == "failed" and done.error == "every generation failed"
        assert (done.dead_lettered, done.failed_responses, done.progress.completed_responses) == (2, 2, 2)
    rows = await app.db.fetch("SELECT status, error FROM responses WHERE experiment_id = $1", created.id)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert json.loads(rows[0]["error"])["code"] == "GENERATION_FAILED"
    dead = await app.redis.xrange(f"{redis_prefix}:stream:experiments.sweeps.normal:dead")
    items = sorted(json.loads(f[b"data"])["combination_id"] for _, f in dead)
    assert items == [1, 2]
    # Each item was delivered twice (the first attempt, then a reclaim) before it was given up.
    assert sorted(claimed_by(w, created.id)) == [1, 1, 2, 2]
