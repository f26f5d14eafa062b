"""A research run against the engine's own speed (docs/research.md "Benchmark").

One run over N dataset rows (default 100) x 1 prompt template x 1 model (the embedded engine), 32 tokens each, timed
from `POST /experiments/{id}/runs` until `GET .../runs/{run_id}` says completed (sampling, rendering, generation on
the experiments worker, storing, reference metrics, the evaluation); against the same N rendered prompts sent
concurrently to `/v1/chat/completions`. Alternated over rounds, medians kept. Target: the run within 1.25x.
Usage: python -m bench.research [--rows 100] [--max-tokens 32] [--rounds 3]
(in a git worktree sharing its venv with another checkout: PYTHONPATH=gen:libs:. first, as pytest sets it)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx

from bench._stack import admin_key, running_platform

MODEL = "smollm2-135m-instruct"
TEMPLATE = "Answer with one number. Question: {{question}}\nAnswer:"
TARGET = 1.25


def ok(r: httpx.Response) -> dict:
    if r.status_code >= 400:
        raise SystemExit(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text}")
    return r.json()


def rows(n: int) -> list[dict]:
    return [{"question": f"What is {i} plus {i + 3}?", "answer": str(2 * i + 3)} for i in range(n)]


async def setup(http: httpx.AsyncClient, n: int, max_tokens: int) -> str:
    d = ok(await http.post("/datasets", json={"name": "bench sums", "format": "jsonl"}))
    slot = ok(await http.post(f"/datasets/{d['id']}/upload", json={"filename": "sums.jsonl",
                                                                   "content_type": "application/jsonl"}))
    body = "".join(json.dumps(r) + "\n" for r in rows(n)).encode()
    async with httpx.AsyncClient(timeout=60) as anonymous:
        (await anonymous.put(slot["upload_url"], content=body,
                             headers={"content-type": "application/jsonl"})).raise_for_status()
    t = ok(await http.post("/prompts", json={"name": "bench", "template": TEMPLATE}))
    models = ok(await http.get("/models", params={"limit": 100}))["data"]
    model = next(m["id"] for m in models if m["model_identifier"] == MODEL)
    r = await http.post("/experiments", json={"name": "bench research", "config": {
        "model_ids": [model], "dataset_ids": [d["id"]], "prompt_template_ids": [t["id"]],
        "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": max_tokens}, "num_samples": n,
        "random_seed": 1}})
    e = ok(r)
    ok(await http.post(f"/experiments/{e['id']}/start", json={}))
    return e["id"]


async def research_run(http: httpx.AsyncClient, experiment_id: str) -> tuple[float, int]:
    started = time.perf_counter()
    run_id = ok(await http.post(f"/experiments/{experiment_id}/runs", json={}))["id"]
    while True:
        run = (await http.get(f"/experiments/{experiment_id}/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.05)
    wall = time.perf_counter() - started
    if run["status"] != "completed":
        raise SystemExit(f"run failed: {run['error']}")
    return wall, int(run["outputs"]["metrics"]["total_tokens"])


async def direct_run(http: httpx.AsyncClient, n: int, max_tokens: int) -> tuple[float, int]:
    prompts = [TEMPLATE.replace("{{question}}", r["question"]) for r in rows(n)]

    async def one(prompt: str) -> int:
        r = await http.post("/v1/chat/completions", timeout=600, json={
            "model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0.7, "top_p": 0.9})
        r.raise_for_status()
        return r.json()["usage"]["total_tokens"]

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one(p) for p in prompts))
    return time.perf_counter() - started, sum(tokens)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    async with running_platform() as cfg:
        key = await admin_key(cfg)
        async with httpx.AsyncClient(base_url=cfg.gateway_url, timeout=600,
                                     headers={"authorization": f"Bearer {key}"}) as http:
            experiment_id = await setup(http, args.rows, args.max_tokens)
            await direct_run(http, 4, 8)  # warm the engine and both paths
            runs, direct = [], []
            for _ in range(args.rounds):
                direct.append(await direct_run(http, args.rows, args.max_tokens))
                runs.append(await research_run(http, experiment_id))
    d_wall = statistics.median(w for w, _ in direct)
    r_wall = statistics.median(w for w, _ in runs)
    ratio = r_wall / d_wall
    print(f"{args.rows} rows x 1 template x 1 model, {args.max_tokens} tokens, median of {args.rounds} rounds:")
    print(f"  /v1/chat/completions x{args.rows} concurrent: {d_wall:.2f} s "
          f"({statistics.median(t for _, t in direct)} tokens)")
    print(f"  research run (queue, worker, store, metrics, evaluation): {r_wall:.2f} s "
          f"({statistics.median(t for _, t in runs)} tokens)")
    print(f"  ratio {ratio:.2f}x (target <= {TARGET}x): {'met' if ratio <= TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
