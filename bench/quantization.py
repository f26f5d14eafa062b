"""Precision against speed and quality: the embedded model as fp32, int8 and int4 (q4_0), one run.

For each variant in the model cache (built first when missing, as `POST /api/v1/models/{name}/load` would):
single-stream decode tok/s (median of --repeats runs) and aggregate tok/s with 8 concurrent streams (end to end and
decode phase, as bench/engine.py measures them), and quality as perplexity on a fixed held-out text
(bench/data/heldout.txt, written for this project) from the engine's prompt logprobs (engine.score, the path of
InferenceService.Score). The quality change against fp32 is the paired mean per-token NLL difference with its 95 %
confidence interval (scipy's t distribution over the tokens). Same prompts, greedy, EOS ignored, prefix cache off.

    flock /work/wt/heavy.lock .venv/bin/python -m bench.quantization [--threads 2] [--max-new 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import pathlib
import statistics
import time

import numpy as np
from scipy import stats

from bench.engine import PROMPTS, concurrent, run_stream, single
from services.inference.artifacts import find_variant
from services.inference.engine import Engine, EngineConfig

MODEL = "smollm2-135m-instruct"
HELDOUT = pathlib.Path(__file__).with_name("data") / "heldout.txt"
VARIANTS = ("fp32", "int8", "int4")
SPELLED = {"fp32": "fp32 (f32)", "int8": "int8 (q8_0)", "int4": "int4 (q4_0)"}


def ensure_variant(quantization: str):
    artifact = find_variant(MODEL, quantization)
    if artifact is None:
        from services.inference.importer import import_model

        print(f"building the {quantization} variant ...", flush=True)
        artifact = import_model(MODEL, quantization=quantization, progress=lambda line: None)
    return artifact


async def measure(quantization: str, args: argparse.Namespace) -> dict:
    artifact = ensure_variant(quantization)
    t = time.perf_counter()
    config = EngineConfig(max_batch=8, threads=args.threads, prefix_cache=False)
    engine = Engine.from_dir(artifact.path, config)
    await engine.start()
    load_s = time.perf_counter() - t
    try:
        tok = engine.tokenizer
        prompts = [tok.encode_chat([{"role": "user", "content": p}]) for p in PROMPTS]
        await run_stream(engine, "warmup", prompts[0], 8)
        one = await single(engine, prompts[0], args.max_new, args.repeats)
        eight = await concurrent(engine, prompts, 8, args.max_new)
        ids = tok.encode(HELDOUT.read_text())
        scored = await engine.score(ids)
        nll = np.array([-s.logprob for s in scored], dtype=np.float64)
    finally:
        await engine.stop()
    return {
        "quantization": quantization,
        "size_mb": artifact.manifest.total_bytes / 1e6,
        "load_s": load_s,
        "single": one["decode_tok_s"],
        "e2e8": eight["end_to_end_tok_s"],
        "decode8": eight["decode_phase_tok_s"],
        "nll": nll,
        "ppl": math.exp(float(nll.mean())),
        "top1": statistics.mean(1.0 if s.greedy else 0.0 for s in scored),
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for q in VARIANTS:
        rows.append(await measure(q, args))
        print(f"  {q}: measured", flush=True)
    base = rows[0]
    tokens = len(base["nll"])
    print(f"\n{MODEL}: {args.threads} threads, {args.max_new} new tokens (greedy, EOS ignored), prefix cache off; "
          f"perplexity over {tokens} tokens of bench/data/heldout.txt")
    head = (f"{'precision':<12} {'size MB':>8} {'load s':>7} {'1-stream tok/s':>15} "
            f"{'8-stream tok/s':>15} {'8 decode tok/s':>15} {'perplexity':>11} {'top-1':>6} "
            f"{'ΔNLL vs fp32 [95% CI]':>26}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if r is base:
            delta = "baseline"
        else:
            d = r["nll"] - base["nll"]
            lo, hi = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
            delta = f"{d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}]"
        print(f"{SPELLED[r['quantization']]:<12} {r['size_mb']:>8.0f} {r['load_s']:>7.2f} "
              f"{r['single']:>15.1f} {r['e2e8']:>15.1f} {r['decode8']:>15.1f} {r['ppl']:>11.3f} "
              f"{r['top1']:>6.3f} {delta:>26}")
    print("\nsize: the variant's files; 8-stream: all tokens / wall "
          "time (prefills included), decode: while all 8 decode; top-1: share of held-out tokens the model ranked "
          "first; ΔNLL: mean per-token negative log-likelihood minus fp32's (nats), paired over the same tokens.")


if __name__ == "__main__":
    asyncio.run(main())
