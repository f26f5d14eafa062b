"""OpenAI batches against the same requests sent live, and what a running batch does to live latency
(docs/batches.md "Figures"); then the moderation classifier's latency per input and its quality on the
evaluation set.

Through Envoy with the `openai` SDK on the whole platform (as `make up` runs it, one inference worker):
1. live p50/p95 of a short chat request on an idle platform (sequential probes);
2. N chat requests of 64 tokens each (ignore_eos, so every one is exactly 64) sent concurrently to
   /v1/chat/completions: wall time;
3. the same N requests as one batch (upload, create, poll until completed): wall time from create to completed;
4. the same batch again while a live probe is sent every `--probe-every` seconds: the probes' p50/p95.
Usage: python -m bench.batches [--requests 200] [--tokens 64] [--probes 15]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import time

import httpx
import openai

from bench._stack import admin_key, percentile, running_platform
from services.inference.moderation import classifier

MODEL = "smollm2-135m-instruct"
PROMPTS = ["Tell me about the ocean.", "Describe a busy market.", "Write about a mountain village.",
           "Explain how bread is made.", "Describe a thunderstorm.", "Write about a library at night."]


def body(i: int, tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} ({i})"}],
            "max_tokens": tokens, "temperature": 0.7, "seed": i, "ignore_eos": True}


async def probe(sdk: openai.AsyncOpenAI) -> float:
    started = time.perf_counter()
    await sdk.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                      max_tokens=16, temperature=0, extra_body={"ignore_eos": True})
    return (time.perf_counter() - started) * 1000


async def live(sdk: openai.AsyncOpenAI, n: int, tokens: int) -> float:
    started = time.perf_counter()
    def kwargs(i: int) -> dict:
        b = body(i, tokens)
        extra = {"ignore_eos": b.pop("ignore_eos")}  # not a parameter of the SDK's signature
        return {**b, "extra_body": extra}

    results = await asyncio.gather(*(sdk.chat.completions.create(**kwargs(i)) for i in range(n)))
    wall = time.perf_counter() - started
    assert all(r.usage.completion_tokens == tokens for r in results)
    return wall


async def run_batch(sdk: openai.AsyncOpenAI, n: int, tokens: int) -> tuple[float, openai.types.Batch]:
    rows = [{"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i, tokens)}
            for i in range(n)]
    data = b"".join(json.dumps(r).encode() + b"\n" for r in rows)
    f = await sdk.files.create(file=("bench.jsonl", io.BytesIO(data)), purpose="batch")
    started = time.perf_counter()
    b = await sdk.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while b.status not in ("completed", "failed", "expired", "cancelled"):
        await asyncio.sleep(0.25)
        b = await sdk.batches.retrieve(b.id)
    wall = time.perf_counter() - started
    assert b.status == "completed" and b.request_counts.completed == n, b
    return wall, b


async def probes_during(sdk: openai.AsyncOpenAI, task: asyncio.Task, every_s: float) -> list[float]:
    out = []
    while not task.done():
        out.append(await probe(sdk))
        await asyncio.sleep(every_s)
    return out


def moderation_latency() -> tuple[float, float]:
    model = classifier.load()
    texts = [t for t, _ in classifier.evaluation_set()]
    model.scores(texts[:4])  # warm
    times = []
    for t in texts * 3:
        started = time.perf_counter()
        model.scores([t])
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), percentile(times, 95)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--probes", type=int, default=15)
    ap.add_argument("--probe-every", type=float, default=0.5)
    args = ap.parse_args()

    async with running_platform() as cfg:
        key = await admin_key(cfg)
        http = httpx.AsyncClient(limits=httpx.Limits(max_connections=args.requests + 16), timeout=600)
        sdk = openai.AsyncOpenAI(base_url=f"{cfg.gateway_url}/v1", api_key=key, max_retries=0, http_client=http)
        for _ in range(3):
            await probe(sdk)  # warm the engine and the connections
        idle = [await probe(sdk) for _ in range(args.probes)]
        live_s = await live(sdk, args.requests, args.tokens)
        # past the engine's interactive window (5 s), so the batch runs on an idle platform as the live run did
        await asyncio.sleep(6)
        batch_s, _ = await run_batch(sdk, args.requests, args.tokens)
        task = asyncio.create_task(run_batch(sdk, args.requests, args.tokens))
        during = await probes_during(sdk, task, args.probe_every)
        batch_probed_s, _ = await task
        await http.aclose()

    n, t = args.requests, args.tokens
    print(f"\nbatches: {n} chat requests x {t} tokens (one inference worker, engine max_batch 16)")
    print(f"  concurrent /v1/chat/completions  wall {live_s:7.1f} s   {n * t / live_s:6.0f} tok/s")
    print(f"  as one batch (create->completed) wall {batch_s:7.1f} s   {n * t / batch_s:6.0f} tok/s   "
          f"ratio {batch_s / live_s:.2f}x (target <= 1.2x)")
    print(f"  batch with live probes running   wall {batch_probed_s:7.1f} s   ratio {batch_probed_s / live_s:.2f}x")
    print("live request (16 tokens), latency ms:")
    print(f"  idle platform       p50 {statistics.median(idle):7.0f}   p95 {percentile(idle, 95):7.0f}   "
          f"(n={len(idle)})")
    print(f"  while a batch runs  p50 {statistics.median(during):7.0f}   p95 {percentile(during, 95):7.0f}   "
          f"(n={len(during)})")
    p50, p95 = moderation_latency()
    print(f"moderation classifier, one input per call: p50 {p50:.2f} ms, p95 {p95:.2f} ms (target p95 <= 20 ms)")
    print(classifier.evaluate(classifier.load(), classifier.evaluation_set()).table())


if __name__ == "__main__":
    asyncio.run(main())
