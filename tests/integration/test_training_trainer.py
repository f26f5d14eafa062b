"""The trainer in its own venv (services/inference/training/trainer.py): real LoRA steps on the embedded model's fp32
checkpoint, and a paused-then-resumed run that ends exactly where a never-paused run ends.

The training venv and the base checkpoint are created on first use (about 45 s and 30 s on a 2-core machine) and
cached in the model cache; the runs themselves are tiny (24 examples, 2 epochs of 6 steps, rank 2, 64 tokens)."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from services.inference.training import trainer as trainer_mod
from services.inference.training.publish import base_checkpoint
from services.inference.training.train_venv import ensure_train_venv

pytestmark = [pytest.mark.integration, pytest.mark.training]

TRAINER = pathlib.Path(trainer_mod.__file__)
BUILTIN = TRAINER.with_name("data") / "builtin.jsonl"


@pytest.fixture(scope="module")
def toolchain() -> tuple[pathlib.Path, pathlib.Path]:
    return ensure_train_venv(), base_checkpoint("smollm2-135m-instruct")


def config(base: pathlib.Path, out: pathlib.Path, **extra) -> pathlib.Path:
    cfg = {"base_dir": str(base), "train_file": str(BUILTIN), "out_dir": str(out), "epochs": 2, "batch_size": 4,
           "learning_rate": 1e-3, "lora_r": 2, "lora_alpha": 4, "lora_dropout": 0.1, "max_length": 64,
           "merge": False, "threads": 2, "checkpoint_every": 0, "seed": 7, **extra}
    path = out.with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg))
    return path


def run(python: pathlib.Path, cfg: pathlib.Path) -> tuple[int, list[dict]]:
    done = subprocess.run([str(python), str(TRAINER), str(cfg)], capture_output=True, text=True, timeout=600)
    events = [json.loads(ln) for ln in done.stdout.splitlines() if ln.startswith("{")]
    return done.returncode, events


def adapter(python: pathlib.Path, out: pathlib.Path) -> dict[str, list[float]]:
    code = ("import json, sys, torch; w = torch.load(sys.argv[1]);"
            "print(json.dumps({k: v.flatten().tolist() for k, v in w.items()}))")
    done = subprocess.run([str(python), "-c", code, str(out / "adapter" / "trainable.pt")],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


@pytest.mark.timeout(900)  # a fresh machine also creates the training venv and base checkpoint
def test_paused_and_resumed_run_equals_the_never_paused_run(toolchain, tmp_path) -> None:
    python, base = toolchain
    rc, straight = run(python, config(base, tmp_path / "straight"))
    assert rc == 0, straight
    rc, first = run(python, config(base, tmp_path / "paused", stop_after_steps=5))
    assert rc == trainer_mod.PAUSED_EXIT
    assert first[-1]["event"] == "paused" and first[-1]["step"] == 5 and first[-1]["total_steps"] == 12
    assert (tmp_path / "paused" / "checkpoint" / "position.json").exists()
    rc, second = run(python, config(base, tmp_path / "paused"))
    assert rc == 0, second
    assert second[0]["resumed"] is True and second[0]["step"] == 5

    def losses(events: list[dict]) -> list[float]:
        return [e["loss"] for e in events if e["event"] == "step"]

    assert len(losses(straight)) == 12 and len(losses(first)) == 5 and len(losses(second)) == 7
    assert losses(first) + losses(second) == pytest.approx(losses(straight), rel=1e-5, abs=1e-6)
    curve_a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    curve_b = json.loads((tmp_path / "paused" / "metrics.json").read_text())
    assert [p["train_loss"] for p in curve_b] == pytest.approx([p["train_loss"] for p in curve_a], rel=1e-5)
    a, b = adapter(python, tmp_path / "straight"), adapter(python, tmp_path / "paused")
    assert a.keys() == b.keys() and len(a) == 4 * 30 * 2  # A and B of q, k, v, o in 30 layers
    for name in a:
        assert b[name] == pytest.approx(a[name], rel=1e-4, abs=1e-6), name
    # The adapter moved: training happened (B starts at zero).
    assert any(abs(x) > 1e-4 for name in a if "lora_B" in name for x in a[name])
    # And the loss went down over the run.
    assert sum(losses(straight)[-6:]) < sum(losses(straight)[:6])
