"""Sweeps as durable jobs against the engine's own best case, in one run (docs/sweeps.md "Benchmark").

1. A 4 x 4 grid (temperature 0.2..1.1 step 0.3 x top_p 0.7..1.0 step 0.1) x 3 responses x 64 tokens on the embedded
   model, created with `POST /api/batch-experiments` through the gateway and run by the platform's experiments
   worker: wall time from the POST to the poll that sees `completed` (generation, storage, scoring and events
   included).
2. The same 48 generations (same parameters and seeds) submitted at once straight to the engine
   (`/v1/chat/completions`, concurrently): wall time.
   For both: responses per minute, and the engine's utilisation sampled every 100 ms from the inference service's
   GetEngineStatus (busy: the share of samples with a generation in progress; occupancy: mean sequences in progress
   over the engine's batch size).
3. Kill: a second worker process joins, a second sweep starts (8 x 4 grid x 1 response: more combinations than the
   first worker holds at once, so the second one gets some), the second worker is SIGKILLed as soon as it holds a
   combination; time from the kill to the sweep's completion (the survivor reclaims the dead worker's
   item after LLMLAB_EXPERIMENTS_SWEEP_CLAIM_IDLE_MS, set to 5 s here), and a check that every response is stored
   exactly once.
Usage: python -m bench.sweeps [--max-tokens 64] [--per 3]   (from a worktree: PYTHONPATH=gen:libs:. first, so the
platform it starts runs this checkout's services)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import sys
import time

import asyncpg
import grpc
import httpx

from bench._stack import admin_key, running_platform
from llmlab.devstack.launcher import ROOT, service_env
from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from services.experiments import sweeps

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
GRID = {"temperature": {"min": 0.2, "max": 1.1, "step": 0.3}, "top_p": {"min": 0.7, "max": 1.0, "step": 0.1}}
KILL_GRID = {"temperature": {"min": 0.2, "max": 1.6, "step": 0.2}, "top_p": {"min": 0.7, "max": 1.0, "step": 0.1}}
CLAIM_IDLE_MS = 5000


class Utilisation:
    """Samples the engine's GetEngineStatus every 100 ms while running."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self._stub = inf_grpc.InferenceServiceStub(self._channel)
        self.active: list[int] = []
        self.max_batch = 16
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            s = await self._stub.GetEngineStatus(inf.GetEngineStatusRequest())
            self.active.append(s.active_requests)
            self.max_batch = s.max_batch_size or self.max_batch
            await asyncio.sleep(0.1)

    def __enter__(self) -> Utilisation:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    def text(self) -> str:
        if not self.active:
            return "no samples"
        busy = sum(1 for a in self.active if a > 0) / len(self.active)
        return (f"busy {busy * 100:.0f}% of {len(self.active)} samples, mean {statistics.mean(self.active):.1f} "
                f"sequences in progress (occupancy {statistics.mean(self.active) / self.max_batch * 100:.0f}% of "
                f"batch {self.max_batch})")


async def wait_status(http: httpx.AsyncClient, sweep_id: int, limit_s: float = 1800) -> dict:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        r = await http.get(f"/api/batch-experiments/{sweep_id}")
        r.raise_for_status()
        b = r.json()["data"]["batch_experiment"]
        if b["status"] in sweeps.FINISHED:
            return b
        await asyncio.sleep(0.25)
    raise TimeoutError(f"sweep {sweep_id} did not finish")


def body(max_tokens: int, per: int, name: str, grid: dict = GRID) -> dict:
    return {"name": name, "model": MODEL, "prompt": PROMPT, "parameter_grid": {**grid, "max_tokens": max_tokens},
            "responses_per_combination": per, "seed": 7}


async def run_sweep(http: httpx.AsyncClient, util_port: int, max_tokens: int, per: int) -> tuple[float, dict, str]:
    with Utilisation(util_port) as u:
        started = time.perf_counter()
        r = await http.post("/api/batch-experiments", json=body(max_tokens, per, "bench sweep"))
        r.raise_for_status()
        created = r.json()["data"]["batch_experiment"]
        done = await wait_status(http, created["id"])
        wall = time.perf_counter() - started
    return wall, {**created, **done}, u.text()


async def run_direct(http: httpx.AsyncClient, util_port: int, max_tokens: int, per: int) -> tuple[float, int, str]:
    grid = sweeps.parse_grid({**GRID, "max_tokens": max_tokens})
    calls = []
    for cid, p in enumerate(grid.combinations(), start=1):
        for i in range(1, per + 1):
            calls.append({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                          "max_tokens": max_tokens, "temperature": p["temperature"], "top_p": p["top_p"],
                          "seed": sweeps.response_seed(7, cid, i)})

    async def one(b: dict) -> int:
        r = await http.post("/v1/chat/completions", json=b, timeout=1800)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    with Utilisation(util_port) as u:
        started = time.perf_counter()
        tokens = await asyncio.gather(*(one(b) for b in calls))
        wall = time.perf_counter() - started
    return wall, sum(tokens), u.text()


async def kill_run(http: httpx.AsyncClient, cfg, max_tokens: int) -> tuple[float, dict, int, int]:  # type: ignore[no-untyped-def]
    env = {**os.environ, **service_env(cfg), "LLMLAB_EXPERIMENTS_WORKER_PORT": "0", "LLMLAB_LOG_LEVEL": "info"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.experiments.worker", cwd=ROOT,
                                                env=env, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    while not (line := (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()).startswith("LLMLAB_READY"):
        assert line, "the extra worker exited"
    r = await http.post("/api/batch-experiments", json=body(max_tokens, 1, "bench kill", KILL_GRID))
    r.raise_for_status()
    sweep_id = r.json()["data"]["batch_experiment"]["id"]
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode()
        assert line, "the extra worker exited"
        with contextlib.suppress(ValueError):
            if json.loads(line).get("event") == "sweep combination claimed":
                break
    proc.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    await proc.wait()
    done = await wait_status(http, sweep_id)
    after = time.perf_counter() - killed
    conn = await asyncpg.connect(cfg.database_url)
    try:
        schema = cfg.env["LLMLAB_EXPERIMENTS_DB_SCHEMA"]
        rows = await conn.fetch(f'SELECT sweep_combination, sweep_iteration FROM "{schema}".responses '
                                "WHERE experiment_id = $1", sweep_id)
    finally:
        await conn.close()
    return after, done, len(rows), len({(r[0], r[1]) for r in rows})


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--per", type=int, default=3)
    args = ap.parse_args()
    async with running_platform(LLMLAB_EXPERIMENTS_SWEEP_CLAIM_IDLE_MS=str(CLAIM_IDLE_MS)) as cfg:
        key = await admin_key(cfg)
        port = cfg.service_ports["inference"]
        async with httpx.AsyncClient(base_url=cfg.gateway_url, timeout=600,
                                     headers={"authorization": f"Bearer {key}"}) as http:
            # Warm-up: the model's first batch, and a first sweep's code paths, outside the timings.
            r = await http.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 8,
                                                              "messages": [{"role": "user", "content": PROMPT}]})
            r.raise_for_status()
            n = 16 * args.per
            direct_wall, direct_tokens, direct_util = await run_direct(http, port, args.max_tokens, args.per)
            sweep_wall, sweep, sweep_util = await run_sweep(http, port, args.max_tokens, args.per)
            print(f"sweep: 4 x 4 grid x {args.per} responses x {args.max_tokens} tokens = {n} generations "
                  f"({MODEL}, one experiments worker, concurrency 16)")
            print(f"  estimated at creation: duration {sweep['estimated_duration']}, cost ${sweep['estimated_cost']}")
            print(f"  through the gateway as a sweep: {sweep_wall:6.1f} s  {n / sweep_wall * 60:6.1f} responses/min  "
                  f"status {sweep['status']}  engine {sweep_util}")
            print(f"  straight to the engine at once: {direct_wall:6.1f} s  {n / direct_wall * 60:6.1f} responses/min  "
                  f"{direct_tokens} tokens  engine {direct_util}")
            print(f"  sweep / direct wall time: {sweep_wall / direct_wall:.2f}x (target <= 1.25x)")
            after, done, stored, distinct = await kill_run(http, cfg, args.max_tokens)
            print(f"kill -9 of a worker holding a combination of an 8 x 4 x 1 sweep (two workers) -> sweep "
                  f"{done['status']} {after:.1f} s later (claim idle {CLAIM_IDLE_MS / 1000:.0f} s); responses stored "
                  f"{stored}, distinct (combination, iteration) {distinct}, expected 32")


if __name__ == "__main__":
    asyncio.run(main())
