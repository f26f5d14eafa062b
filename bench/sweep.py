"""Lab-shaped load on the engine in process, before (no prefix cache, no shared prefill) and after, in one run.

1. Sweep: one ~300-token prompt (instructions plus context) x 16 parameter combinations (temperature x top_p) x 4
   responses (seeded), 64 new tokens, all submitted at once, as the experiments runner does: wall time, prompt
   tokens run through the model, TTFT p50/p99.
2. Shared prompt: 16 concurrent streams of that prompt (greedy, 64 new tokens): TTFT p50/p99.
3. Burst: 4 streams decoding, then 16 new requests (eight prompts of different lengths) arrive at once; the running
   streams' inter-token latency p50/p99 while the burst is admitted (until every new request has its first
   token) against the same streams' quiet figure just before. "Before" also admits without the interleave budget
   (a whole prefill of up to prefill_tokens between two decode steps).
Usage: python -m bench.sweep [MODEL_DIR] [--threads 2] [--skip-before]
MODEL_DIR defaults to $LLMLAB_MODEL_DIR, then the importer's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import time
from dataclasses import replace

from bench._stack import percentile
from bench.prompts import BATCH
from services.inference.artifacts import default_cache_dir
from services.inference.domain import GenerationRequest, SamplingParams
from services.inference.engine import Engine, EngineConfig, ModelArtifact, load_artifact

CONTEXT = (
    "Context: The city council met on Tuesday to discuss the new public transport plan. The plan adds three bus "
    "lines that connect the northern suburbs with the central station, extends the tram line to the university "
    "campus, and introduces a single ticket valid for ninety minutes on every bus, tram and train in the region. "
    "Supporters said the plan would cut car traffic in the centre by a fifth and help students and shift workers "
    "who today need two or three tickets for one trip. Critics worried about the cost, which the council estimates "
    "at forty million euros over five years, and about construction work on the main avenue during the summer. "
    "The council will vote on the plan next month after a public consultation that runs until the end of April. "
    "Local shops on the main avenue asked for compensation during the works, and the cycling association asked "
    "for protected bike lanes along the new bus routes; the council promised an answer before the vote. "
)
INSTRUCTIONS = (
    "You are an assistant that writes short, neutral summaries for a city newsletter. Read the context below and "
    "write a summary of two or three sentences for residents. Mention what changes, who benefits and when the "
    "decision is made. Do not give your own opinion and do not invent numbers that are not in the context. "
)
SWEEP_PROMPT = INSTRUCTIONS + CONTEXT + "Summary:"
TEMPERATURES = (0.2, 0.5, 0.8, 1.1)
TOP_PS = (0.8, 0.9, 0.95, 1.0)
RESPONSES = 4
_ids = itertools.count()


async def stream(engine: Engine, prompt: list[int], params: SamplingParams, stamps: list[float] | None = None) -> dict:
    """One request: the wall time of every token (into `stamps` when given), TTFT as the engine measured it."""
    stamps = [] if stamps is None else stamps
    final = None
    async for event in engine.generate(GenerationRequest(f"b{next(_ids)}", prompt, params)):
        stamps.extend([time.perf_counter()] * len(event.token_ids))
        final = event
    assert final is not None and final.finish_reason != "error", final
    return {"stamps": stamps, "ttft_ms": final.time_to_first_token_ms or 0.0}


async def sweep(engine: Engine, prompt: list[int], new: int) -> dict:
    params = [
        SamplingParams(temperature=t, top_p=p, seed=1000 * i + r, max_tokens=new, ignore_eos=True)
        for i, (t, p) in enumerate(itertools.product(TEMPERATURES, TOP_PS)) for r in range(RESPONSES)
    ]
    before = engine.stats()
    started = time.perf_counter()
    runs = await asyncio.gather(*(stream(engine, prompt, p) for p in params))
    wall = time.perf_counter() - started
    after = engine.stats()
    ttfts = [r["ttft_ms"] for r in runs]
    return {"requests": len(runs), "wall_s": wall, "prefill_tokens": after.prefill_tokens - before.prefill_tokens,
            "prompt_tokens": after.prompt_tokens - before.prompt_tokens,
            "ttft_p50_ms": percentile(ttfts, 50), "ttft_p99_ms": percentile(ttfts, 99)}


async def shared(engine: Engine, prompt: list[int], streams: int, new: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    runs = await asyncio.gather(*(stream(engine, prompt, params) for _ in range(streams)))
    ttfts = [r["ttft_ms"] for r in runs]
    return {"ttft_p50_ms": percentile(ttfts, 50), "ttft_p99_ms": percentile(ttfts, 99)}


async def burst(engine: Engine, prompts: list[list[int]], new: int) -> dict:
    """Inter-token gaps of 4 running streams: quiet, then while 16 new requests are admitted."""
    long = SamplingParams(temperature=0.0, max_tokens=engine.max_seq_len // 2, ignore_eos=True)
    stamps: list[list[float]] = [[] for _ in range(4)]
    running = [asyncio.create_task(stream(engine, prompts[i], long, stamps[i])) for i in range(4)]
    await asyncio.sleep(1.0)  # all four decoding
    quiet_from = time.perf_counter()
    await asyncio.sleep(2.0)
    burst_from = time.perf_counter()
    params = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    arrivals = await asyncio.gather(*(stream(engine, prompts[i % len(prompts)], params) for i in range(16)))
    admitted = max(r["stamps"][0] for r in arrivals)
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)
    quiet, during = [], []
    for series in stamps:
        for a, b in itertools.pairwise(series):
            if quiet_from <= a and b <= burst_from:
                quiet.append((b - a) * 1000)
            elif burst_from <= b and a <= admitted:
                during.append((b - a) * 1000)
    return {"quiet_p50_ms": percentile(quiet, 50), "quiet_p99_ms": percentile(quiet, 99),
            "burst_p50_ms": percentile(during, 50), "burst_p99_ms": percentile(during, 99),
            "admission_s": admitted - burst_from}


CONFIGS = {
    "before (no prefix cache/shared prefill/interleave)": {"prefix_cache": False, "share_prefill": False,
                                                            "interleave_ratio": 0.0},
    "after (prefix cache + shared prefill)": {},
}


async def measure(artifact: ModelArtifact, config: EngineConfig, new: int, parts: set[str]) -> dict:
    engine = Engine(artifact, config)
    await engine.start()
    tok = engine.tokenizer
    prompt = tok.encode_chat([{"role": "user", "content": SWEEP_PROMPT}])
    others = [tok.encode_chat([{"role": "user", "content": p}]) for p in BATCH]
    try:
        await stream(engine, others[2], SamplingParams(temperature=0.0, max_tokens=8))  # warm-up
        out: dict = {"prompt_tokens": len(prompt)}
        if "sweep" in parts:
            out["sweep"] = await sweep(engine, prompt, new)
        if "shared" in parts:
            out["shared16"] = await shared(engine, prompt, 16, new)
        if "burst" in parts:
            out["burst"] = await burst(engine, others, new)
        return out
    finally:
        await engine.stop()


def report(results: dict[str, dict]) -> None:
    first = next(iter(results.values()))
    print(f"sweep: one {first['prompt_tokens']}-token prompt x {len(TEMPERATURES) * len(TOP_PS)} combinations x "
          f"{RESPONSES} responses")
    if "sweep" in first:
        print(f"  {'engine':<52}{'wall s':>8}{'prefill tok':>12}{'of prompt tok':>14}{'TTFT p50':>10}{'TTFT p99':>10}")
    for name, r in results.items():
        if "sweep" not in r:
            continue
        s = r["sweep"]
        print(f"  {name:<52}{s['wall_s']:>8.2f}{s['prefill_tokens']:>12}{s['prompt_tokens']:>14}"
              f"{s['ttft_p50_ms']:>10.0f}{s['ttft_p99_ms']:>10.0f}")
    print("16 concurrent streams sharing that prompt:")
    for name, r in results.items():
        if "shared16" in r:
            s = r["shared16"]
            print(f"  {name:<52}TTFT p50 {s['ttft_p50_ms']:.0f} ms  p99 {s['ttft_p99_ms']:.0f} ms")
    print("inter-token latency of 4 running streams, quiet vs while 16 new requests are admitted:")
    for name, r in results.items():
        if "burst" not in r:
            continue
        b = r["burst"]
        print(f"  {name:<52}quiet p50/p99 {b['quiet_p50_ms']:.1f}/{b['quiet_p99_ms']:.1f} ms  burst p50/p99 "
              f"{b['burst_p50_ms']:.1f}/{b['burst_p99_ms']:.1f} ms  ({b['burst_p99_ms'] / b['quiet_p99_ms']:.1f}x, "
              f"admitted in {b['admission_s']:.2f} s)")
    names = list(results)
    if len(names) == 2 and all(k in first for k in ("sweep", "shared16", "burst")):
        old, new = results[names[0]], results[names[1]]
        print(f"sweep speed-up {old['sweep']['wall_s'] / new['sweep']['wall_s']:.2f}x (target >= 2x); shared-prompt "
              f"TTFT p50 {new['shared16']['ttft_p50_ms'] / old['shared16']['ttft_p50_ms']:.2f}x of before "
              f"(target <= 0.25x); burst ITL p99 {new['burst']['burst_p99_ms'] / new['burst']['quiet_p99_ms']:.1f}x "
              f"quiet (target <= 3x)")


async def run(model_dir: str, threads: int, new: int, skip_before: bool = False,
              parts: frozenset[str] = frozenset({"sweep", "shared", "burst"})) -> dict[str, dict]:
    artifact = load_artifact(model_dir, threads=threads)
    results = {}
    for name, overrides in CONFIGS.items():
        if skip_before and overrides:
            continue
        results[name] = await measure(artifact, replace(EngineConfig(max_batch=16, threads=threads), **overrides),
                                      new, set(parts))
    return results


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("LLMLAB_MODEL_DIR") or str(default_cache_dir() / "smollm2-135m-instruct")
    ap.add_argument("model_dir", nargs="?", default=default)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--skip-before", action="store_true")
    ap.add_argument("--parts", default="sweep,shared,burst")
    a = ap.parse_args()
    report(await run(a.model_dir, a.threads, a.new, a.skip_before, frozenset(a.parts.split(","))))


if __name__ == "__main__":
    asyncio.run(main())
