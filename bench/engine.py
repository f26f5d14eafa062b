"""The generation engine alone, in process: single-stream decode tok/s and TTFT, aggregate tok/s at N streams.

The measurement the inference issue compares against: a ~101-token chat prompt, 128 new tokens (EOS ignored),
greedy, 2 intra-op threads. Aggregate figures are given two ways: end to end (all completion tokens / wall time from
the first submission to the last token, prefills included) and decode phase (tokens streamed while every stream is
decoding / that time), the latter being what the onnxruntime-genai batch figure measures. The prefix cache is off
unless --prefix-cache: the single-stream prompt repeats, and a cache hit would hide its prefill.
Usage: python bench/engine.py [MODEL_DIR] [--threads 2] [--max-new 128] [--streams 1,4,8,16] [--repeats 3]
       [--prefix-cache]
MODEL_DIR defaults to $LLMLAB_MODEL_DIR, then /tmp/model-work/onnx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from services.inference.domain import GenerationRequest, SamplingParams
from services.inference.engine import Engine, EngineConfig

LONG = (
    "You are reviewing a short report about renewable energy. The report says that solar panel prices fell "
    "by about ninety percent over the last decade, that wind power is now the cheapest source of new electricity "
    "in many countries, and that battery storage is growing quickly. Summarize the three main points of the report "
    "as a numbered list. Keep each point short and clear."
)
PROMPTS = [
    LONG,
    "Write a short poem about the sea and the wind at night. " * 3,
    "What is the capital of France? Answer in one sentence.",
    "Explain in simple words how a refrigerator keeps food cold, and why it needs electricity to work.",
    "List five fruits that are rich in vitamin C and say one sentence about each of them.",
    "Translate to French: The weather is nice today and I want to go for a walk in the park with my dog.",
    "What are the differences between a virus and a bacterium? Give a short answer suitable for a child. " * 2,
    "Give me three tips for writing clean Python code.",
]


async def run_stream(engine: Engine, rid: str, prompt_ids: list[int], max_new: int) -> dict:
    params = SamplingParams(temperature=0.0, max_tokens=max_new, ignore_eos=True)
    start = time.perf_counter()
    stamps: list[float] = []
    final = None
    async for event in engine.generate(GenerationRequest(rid, prompt_ids, params)):
        now = time.perf_counter()
        stamps.extend([now] * len(event.token_ids))
        final = event
    assert final is not None and final.usage is not None, "stream ended without a final event"
    return {"start": start, "stamps": stamps, "ttft_ms": final.time_to_first_token_ms, "tokens": len(stamps)}


async def single(engine: Engine, prompt_ids: list[int], max_new: int, repeats: int) -> dict:
    rates, ttfts = [], []
    for i in range(repeats):
        r = await run_stream(engine, f"single-{i}", prompt_ids, max_new)
        stamps = r["stamps"]
        rates.append((len(stamps) - 1) / (stamps[-1] - stamps[0]))
        ttfts.append(r["ttft_ms"])
    return {
        "decode_tok_s": statistics.median(rates),
        "decode_tok_s_best": max(rates),
        "ttft_ms": statistics.median(ttfts),
        "ttft_ms_best": min(ttfts),
    }


async def concurrent(engine: Engine, prompts: list[list[int]], streams: int, max_new: int) -> dict:
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(run_stream(engine, f"c{streams}-{i}", prompts[i % len(prompts)], max_new) for i in range(streams))
    )
    wall = max(r["stamps"][-1] for r in results) - t0
    total = sum(r["tokens"] for r in results)
    all_decoding = max(r["stamps"][0] for r in results)
    first_done = min(r["stamps"][-1] for r in results)
    in_window = sum(1 for r in results for t in r["stamps"] if all_decoding < t <= first_done)
    window = first_done - all_decoding
    ttfts = sorted(r["ttft_ms"] for r in results)
    return {
        "streams": streams,
        "end_to_end_tok_s": total / wall,
        "decode_phase_tok_s": in_window / window if window > 0 else float("nan"),
        "ttft_p50_ms": statistics.median(ttfts),
        "ttft_max_ms": ttfts[-1],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", nargs="?", default=os.environ.get("LLMLAB_MODEL_DIR", "/tmp/model-work/onnx"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--prefix-cache", action="store_true")
    args = ap.parse_args()
    stream_counts = [int(s) for s in args.streams.split(",") if s]

    t = time.perf_counter()
    config = EngineConfig(max_batch=args.max_batch, threads=args.threads, prefix_cache=args.prefix_cache)
    engine = Engine.from_dir(args.model_dir, config)
    load_s = time.perf_counter() - t
    await engine.start()
    tok = engine.tokenizer
    prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
    try:
        await run_stream(engine, "warmup", prompts[0], 8)
        s = await single(engine, prompts[0], args.max_new, args.repeats)
        print(
            f"model {args.model_dir}  threads {args.threads}  load {load_s:.2f}s  prompt {len(prompts[0])} tokens  "
            f"new {args.max_new}  prefix cache {'on' if args.prefix_cache else 'off'}"
        )
        print(
            f"single stream ({args.repeats} runs, median / best): decode {s['decode_tok_s']:.1f} / "
            f"{s['decode_tok_s_best']:.1f} tok/s  TTFT (prefill) {s['ttft_ms']:.0f} / {s['ttft_ms_best']:.0f} ms"
        )
        print(
            f"{'streams':>7}  {'end-to-end tok/s':>16}  {'decode-phase tok/s':>18}  {'TTFT p50 ms':>11}  "
            f"{'TTFT max ms':>11}"
        )
        for n in stream_counts:
            c = await concurrent(engine, prompts, n, args.max_new)
            print(
                f"{n:>7}  {c['end_to_end_tok_s']:>16.1f}  {c['decode_phase_tok_s']:>18.1f}  "
                f"{c['ttft_p50_ms']:>11.0f}  {c['ttft_max_ms']:>11.0f}"
            )
    finally:
        await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
