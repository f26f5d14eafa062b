"""Peer runtimes on the same model and prompts, run in their own venv (.venv-bench): llama.cpp (llama-cpp-python on
the GGUF) and onnxruntime-genai's runtime (on our ONNX artifact). Prints one JSON object.

Usage: .venv-bench/bin/python bench/peers.py GGUF_PATH ONNX_DIR [--threads 2] [--new 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# Run as a script in .venv-bench, where llmlab is not installed: prompts.py beside it is found as a top-level module.
from prompts import BATCH, LONG


def chat(template_user: str) -> str:
    return (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{template_user}<|im_end|>\n<|im_start|>assistant\n"
    )


def bench_llama_cpp(gguf: str, threads: int, new: int) -> dict:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, n_ctx=2048, n_threads=threads, n_batch=512, verbose=False, logits_all=False)
    prompt = chat(LONG)
    tokens = llm.tokenize(prompt.encode(), special=True)
    llm.create_completion(prompt, max_tokens=8, temperature=0)  # warm-up
    decode, prefill = [], []
    for _ in range(3):
        llm.reset()
        t0 = time.perf_counter()
        first = None
        n = 0
        for _chunk in llm.create_completion(prompt, max_tokens=new, temperature=0, stream=True,
                                            stop=[], logit_bias=None):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        prefill.append((first - t0) * 1000)
        decode.append((n - 1) / (end - first))
    return {"prompt_tokens": len(tokens), "single_stream_tok_s": round(statistics.median(decode), 1),
            "ttft_ms": round(statistics.median(prefill), 1), "batching": "none (one sequence at a time)"}


def bench_genai(onnx_dir: str, threads: int, new: int) -> dict:
    import os
    import tempfile

    import onnxruntime_genai as og

    # Same thread count as the others: a copy of the artifact dir whose genai_config sets the session's threads.
    work = Path(tempfile.mkdtemp(prefix="genai-"))
    for f in Path(onnx_dir).iterdir():
        if f.name != "genai_config.json":
            os.symlink(f, work / f.name)
    cfg = json.loads((Path(onnx_dir) / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    (work / "genai_config.json").write_text(json.dumps(cfg))
    config = og.Config(str(work))
    model = og.Model(config)
    tok = og.Tokenizer(model)

    def run(prompts: list[str]) -> tuple[float, float, int]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=2048, min_length=0, do_sample=False, batch_size=len(prompts))
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(tok.encode_batch([chat(p) for p in prompts]))
        first = time.perf_counter()
        steps = 0
        while steps < new and not gen.is_done():
            gen.generate_next_token()
            steps += 1
        end = time.perf_counter()
        return (first - t0) * 1000, len(prompts) * steps / (end - first), steps

    run([LONG])  # warm-up
    singles = [run([LONG]) for _ in range(3)]
    batch = run(BATCH[:8])
    return {"single_stream_tok_s": round(statistics.median(s[1] for s in singles), 1),
            "ttft_ms": round(statistics.median(s[0] for s in singles), 1),
            "aggregate_tok_s_batch8": round(batch[1], 1)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf")
    ap.add_argument("onnx_dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--only", choices=("llama.cpp", "onnxruntime-genai"), help="run one peer (a crash hides no other)")
    a = ap.parse_args()
    out: dict = {}
    for name, fn, arg in (("llama.cpp", bench_llama_cpp, a.gguf), ("onnxruntime-genai", bench_genai, a.onnx_dir)):
        if a.only and name != a.only:
            continue
        try:
            out[name] = fn(arg, a.threads, a.new)
        except Exception as exc:  # a missing peer is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
