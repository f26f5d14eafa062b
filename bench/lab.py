"""The lab loop's costs, in one run: generation pipeline overhead, scoring latency, comparison listing at scale.

1. One experiment generates N responses (default 16, 64 tokens) through `POST /api/responses/generate` against the
   same N generations sent straight to `/v1/chat/completions` concurrently; alternated over rounds, medians kept.
   The overhead is the pipeline's (store, score, events, render) over the engine's own wall time.
2. Scoring latency p50/p95 of a 500-word response, in process (services/metrics/scoring.py), no judge.
3. `GET /api/responses/comparison` p50/p95 with 100k stored responses (inserted with SQL in the bench's schema).
Usage: python bench/lab.py [--responses 16] [--max-tokens 64] [--rounds 3] [--stored 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg
import httpx

from bench._stack import KeepAliveClient, admin_key, drive, percentile, running_platform
from services.metrics import scoring

MODEL = "smollm2-135m-instruct"
PROMPT = "Write a long story about a lighthouse keeper and a storm, with many details."


async def lab_run(http: httpx.AsyncClient, exp_id: int, n: int) -> tuple[float, int]:
    started = time.perf_counter()
    r = await http.post("/api/responses/generate", json={"experiment_id": exp_id, "count": n},
                        headers={"accept": "application/json"}, timeout=600)
    wall = time.perf_counter() - started
    r.raise_for_status()
    return wall, sum(x["performance"]["token_count"] for x in r.json()["data"]["results"])


async def direct_run(http: httpx.AsyncClient, n: int, max_tokens: int) -> tuple[float, int]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": max_tokens,
            "temperature": 0.7, "top_p": 0.9}

    async def one() -> int:
        r = await http.post("/v1/chat/completions", json=body, timeout=600)
        r.raise_for_status()
        return r.json()["usage"]["completion_tokens"]

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - started, sum(tokens)


def scoring_latency(samples: int) -> tuple[float, float, int]:
    words = (("The keeper climbed the iron stairs at dusk, counting each of the 114 steps. Rain hammered the "
              "glass while the lamp turned, and far below a fishing boat named Marisol fought the swell. ") * 20)
    text = " ".join(words.split()[:500])
    scoring.score(text, PROMPT)  # the lexicons load once per process
    times = []
    for i in range(samples):
        started = time.perf_counter()
        scoring.score(f"{text} Night {i}.", PROMPT)
        times.append((time.perf_counter() - started) * 1000)
    return percentile(times, 50), percentile(times, 95), len(text.split())


async def fill(database_url: str, schema: str, exp_id: int, n: int) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'SET search_path TO "{schema}"')
        await conn.execute(
            """INSERT INTO responses (experiment_id, content, model, parameters, quality_metrics, overall_quality,
                                      response_time_ms, token_count, cost, created_at)
               SELECT $1, 'Stored response ' || g || ': the keeper watched the storm pass over the harbour.',
                      'smollm2-135m-instruct', '{"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}',
                      '{"coherence": 80, "completeness": 70, "readability": 75, "creativity": 85,
                        "specificity": 60, "length_appropriateness": 90}', 50 + (g % 50), 500 + g % 300, 64,
                      0.0001 * (g % 7), now() - make_interval(secs => g)
               FROM generate_series(1, $2) g""",
            exp_id, n)
        await conn.execute("ANALYZE responses")
    finally:
        await conn.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--responses", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stored", type=int, default=100_000)
    parser.add_argument("--listing-requests", type=int, default=200)
    args = parser.parse_args()

    p50, p95, words = scoring_latency(200)
    print(f"scoring, {words}-word response, in process, no judge: p50 {p50:.2f} ms, p95 {p95:.2f} ms")

    async with running_platform() as cfg:
        key = await admin_key(cfg)
        async with httpx.AsyncClient(base_url=cfg.gateway_url, headers={"authorization": f"Bearer {key}"}) as http:
            r = await http.post("/api/experiments", json={
                "name": "bench", "model": MODEL, "prompt": PROMPT,
                "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": args.max_tokens}})
            r.raise_for_status()
            exp_id = r.json()["data"]["experiment"]["id"]
            await direct_run(http, 2, 8)  # warm the engine and both paths
            await lab_run(http, exp_id, 2)
            lab, direct = [], []
            for _ in range(args.rounds):
                direct.append(await direct_run(http, args.responses, args.max_tokens))
                lab.append(await lab_run(http, exp_id, args.responses))
            d_wall = statistics.median(w for w, _ in direct)
            l_wall = statistics.median(w for w, _ in lab)
            d_tps = statistics.median(t / w for w, t in direct)
            l_tps = statistics.median(t / w for w, t in lab)
            print(f"{args.responses} x {args.max_tokens} tokens, median of {args.rounds} rounds:")
            print(f"  /v1/chat/completions x{args.responses} concurrent: {d_wall:.2f} s, {d_tps:.0f} tok/s")
            print(f"  /api/responses/generate (store, score, events): {l_wall:.2f} s, {l_tps:.0f} tok/s")
            print(f"  pipeline overhead: {(l_wall / d_wall - 1) * 100:+.1f} % wall, "
                  f"{(d_tps / l_tps - 1) * 100:+.1f} % per token")

            await fill(cfg.database_url, cfg.env["LLMLAB_EXPERIMENTS_DB_SCHEMA"], exp_id, args.stored)
        listing = KeepAliveClient(cfg.gateway_port, {"authorization": f"Bearer {key}"})
        try:
            for label, path in (("default sort", "/api/responses/comparison"),
                                ("quality 80-100, sort by quality",
                                 "/api/responses/comparison?quality_min=80&sort_by=quality"),
                                ("search in content", "/api/responses/comparison?search=response%2099999")):
                async def get(path: str = path) -> None:
                    status, body = await listing.get(path)
                    if status != 200:
                        raise RuntimeError(f"{status}: {body[:200]!r}")

                await drive(get, 10, 1)
                lat, _ = await drive(get, args.listing_requests, 1)
                print(f"GET /api/responses/comparison, {args.stored} stored, {label}: "
                      f"p50 {percentile(lat, 50):.1f} ms, p95 {percentile(lat, 95):.1f} ms")
        finally:
            listing.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
