"""LoRA training on this machine (docs/training.md "Figures"): `python -m bench.training [--examples 200]
[--epochs 3] [--skip-platform | --only-platform]`.

1. The trainer (services/inference/training/trainer.py in the training venv) over EXAMPLES short chat examples for
   EPOCHS epochs, batch 8, rank 8: steps/s, tokens/s, peak memory (the trainer's max RSS), merge time.
2. The same run paused at its midpoint and resumed: checkpoint seconds, restore seconds, and the resumed run's
   final loss beside the never-paused run's (the same, to float tolerance: the pause costs time, not results).
3. Merge -> int8 ONNX export (the importer's builder) -> artifact: seconds.
4. Through the platform (the whole stack, as `make up` runs it): the time from `POST /v1/fine_tuning/jobs`
   (12 examples, 4 epochs) to the first streamed token of the new model on `/v1/chat/completions`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import pathlib
import random
import resource
import shutil
import subprocess
import tempfile
import time

import httpx

from services.inference.artifacts import default_cache_dir
from services.inference.training import trainer
from services.inference.training.publish import base_checkpoint, publish_merged
from services.inference.training.train_venv import ensure_train_venv

BASE = "smollm2-135m-instruct"


def examples(n: int, seed: int = 0) -> list[dict]:
    """Short arithmetic and word questions with exact answers (what a 135M model can be taught quickly)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        if i % 2:
            q, ans = f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
        else:
            word = rng.choice(["river", "lantern", "orbit", "meadow", "signal", "harbour", "copper", "violet"])
            q, ans = f"Spell '{word}' backwards.", f"'{word}' backwards is '{word[::-1]}'."
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": ans}]})
    return out


def run_trainer(python: pathlib.Path, cfg: dict, work: pathlib.Path, name: str) -> tuple[list[dict], float, float]:
    """Run the trainer; its events, wall seconds, and its peak RSS in MiB."""
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.monotonic()
    done = subprocess.run([str(python), str(trainer.__file__), str(path)], capture_output=True, text=True)
    wall = time.monotonic() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    events = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode not in (0, trainer.PAUSED_EXIT):
        raise SystemExit(f"trainer failed:\n{done.stderr[-3000:]}")
    return events, wall, max(peak, before) / 1024


def training_figures(args: argparse.Namespace) -> pathlib.Path:
    python = ensure_train_venv()
    base = base_checkpoint(BASE)
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-training-"))
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(e) + "\n" for e in examples(args.examples)))
    cfg = {"base_dir": str(base), "train_file": str(data), "out_dir": str(work / "straight"), "epochs": args.epochs,
           "batch_size": 8, "learning_rate": 2e-4, "lora_r": 8, "lora_alpha": 32, "lora_dropout": 0.05,
           "seed": 1, "max_length": 128, "checkpoint_every": 0, "merge": True}
    events, wall, peak = run_trainer(python, cfg, work, "straight")
    start = next(e for e in events if e["event"] == "start")
    steps = [e for e in events if e["event"] == "step"]
    done = next(e for e in events if e["event"] == "done")
    train_s = wall - start["load_seconds"] - done["merge_seconds"]
    print(f"LoRA training, {args.examples} examples x {args.epochs} epochs, batch 8, r 8 "
          f"({start['trainable_parameters']:,} trainable parameters, {start['device']}):")
    print(f"  steps            {len(steps)} in {train_s:.1f} s = {len(steps) / train_s:.2f} steps/s")
    print(f"  tokens/s         {done['trained_tokens'] / train_s:.0f} ({done['trained_tokens']} tokens)")
    print(f"  peak memory      {peak:.0f} MiB (trainer max RSS)")
    print(f"  model load       {start['load_seconds']:.1f} s (torch, transformers, peft import + fp32 base)")
    print(f"  loss             {steps[0]['loss']:.3f} -> {steps[-1]['loss']:.3f}")
    print(f"  merge            {done['merge_seconds']:.1f} s (merge_and_unload + fp32 save)")

    half = len(steps) // 2
    paused_cfg = {**cfg, "out_dir": str(work / "paused"), "merge": False, "stop_after_steps": half}
    first, _, _ = run_trainer(python, paused_cfg, work, "paused-1")
    second, _, _ = run_trainer(python, {**paused_cfg, "stop_after_steps": 0}, work, "paused-2")
    paused = first[-1]
    resumed = next(e for e in second if e["event"] == "start")
    last = [e for e in second if e["event"] == "step"][-1]
    print(f"Pause at step {half} and resume (baseline: the never-paused run above):")
    print(f"  checkpoint       {paused['seconds']:.2f} s (adapter, AdamW state, scheduler, RNG, position)")
    print(f"  restore          {resumed['restore_seconds']:.2f} s (+ {resumed['load_seconds']:.1f} s model load)")
    print(f"  final loss       {last['loss']:.6f} resumed vs {steps[-1]['loss']:.6f} never paused")

    t0 = time.monotonic()
    artifact = publish_merged(pathlib.Path(done["merged"]), model_id=f"bench-ft-{int(time.time())}",
                              name="bench", description="bench/training.py", base_model_id=BASE,
                              progress=lambda m: None)
    export_s = time.monotonic() - t0
    print(f"Merge -> ONNX int8 export: {export_s:.1f} s ({artifact.manifest.total_bytes / 1e6:.0f} MB)")
    shutil.rmtree(artifact.path, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return work


async def platform_figures() -> None:
    from bench._stack import admin_key, running_platform

    rows = examples(12, seed=5)
    async with running_platform() as cfg:
        key = await admin_key(cfg)
        async with httpx.AsyncClient(base_url=cfg.gateway_url, timeout=120,
                                     headers={"authorization": f"Bearer {key}"}) as http:
            body = "".join(json.dumps(e) + "\n" for e in rows).encode()
            up = await http.post("/v1/files", files={"file": ("b.jsonl", io.BytesIO(body))},
                                 data={"purpose": "fine-tune"})
            up.raise_for_status()
            t0 = time.monotonic()
            r = await http.post("/v1/fine_tuning/jobs", json={
                "training_file": up.json()["id"], "model": BASE, "suffix": "bench",
                "hyperparameters": {"n_epochs": 4, "batch_size": 4}})
            r.raise_for_status()
            job = r.json()
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                await asyncio.sleep(0.5)
                job = (await http.get(f"/v1/fine_tuning/jobs/{job['id']}")).json()
            if job["status"] != "succeeded":
                raise SystemExit(f"job {job['status']}: {job['error']}")
            done_s = time.monotonic() - t0
            async with http.stream("POST", "/v1/chat/completions", json={
                    "model": job["fine_tuned_model"], "stream": True, "max_tokens": 8,
                    "messages": [{"role": "user", "content": "What is 2 plus 3?"}]}) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: ") and '"content"' in line:
                        break
            first = time.monotonic() - t0
            shutil.rmtree(default_cache_dir() / job["fine_tuned_model"], ignore_errors=True)
    print(f"Job creation -> succeeded: {done_s:.1f} s; -> first token of the new model on /v1: {first:.1f} s "
          "(12 examples x 4 epochs; includes the merge, the export and the load)")


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.training")
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-platform", action="store_true")
    ap.add_argument("--only-platform", action="store_true")
    args = ap.parse_args()
    if not args.only_platform:
        training_figures(args)
    if not args.skip_platform:
        asyncio.run(platform_figures())


if __name__ == "__main__":
    main()
