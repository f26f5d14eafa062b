"""The torch side of a training job: LoRA on a causal LM, loss on the assistant tokens only, resumable.

Run by path inside the training venv (train_venv.py), never imported by the service or the worker:

    <venv>/bin/python trainer.py CONFIG.json

CONFIG holds the job (see `Config`). Every line the trainer prints on stdout is one JSON object (`event`:
start, step, epoch, validation, checkpoint, paused, done, error); the worker stores them as the job's progress
and logs (docs/training.md "Trainer protocol").

Pause and resume: SIGTERM (the worker's pause) or SIGUSR1 ask for a stop; at the next step boundary the trainer
writes a checkpoint — adapter weights, optimizer and scheduler state, torch's RNG state, the data position
(epoch, step in epoch) and the loss curve so far — and exits with PAUSED_EXIT. A run started on the same config
continues from `<out>/checkpoint`. The data order of an epoch comes from a generator seeded by (seed, epoch), so
the position is two integers; the RNG state carries dropout. A paused-and-resumed run therefore computes the same
steps as one that never paused. A checkpoint is also written every `checkpoint_every` steps, so a worker killed
mid-job (the trainer dies with it: PR_SET_PDEATHSIG) loses at most that many steps.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pathlib
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

PAUSED_EXIT = 3
STARTED = time.monotonic()
IGNORE = -100
CHECKPOINT = "checkpoint"
ADAPTER = "adapter"
MERGED = "merged"


@dataclass
class Config:
    base_dir: str  # Hugging Face fp32 checkpoint of the base model
    train_file: str  # JSONL, one {"messages": [...]} per line (already validated by the service)
    out_dir: str
    validation_file: str | None = None
    epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-4
    lora_r: int = 8
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    seed: int = 42
    max_length: int = 256
    warmup_ratio: float = 0.0
    log_every: int = 5
    checkpoint_every: int = 25
    merge: bool = True
    threads: int = 0  # 0: torch's default
    device: str = "auto"  # auto: cuda when available
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    stop_after_steps: int = 0  # tests: behave as if paused after this many steps (0: never)


def emit(event: str, **data: Any) -> None:
    print(json.dumps({"event": event, **data}, separators=(",", ":")), flush=True)


def _die_with_parent() -> None:
    """Linux: the kernel kills the trainer when the worker that started it dies (kill -9 included)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# --------------------------------------------------------------------------------------------------- data


def read_examples(path: str) -> list[list[dict[str, str]]]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line)["messages"])
    return out


def encode(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and labels that are IGNORE except on assistant turns.

    Each assistant turn's tokens are those between the rendering of the turns before it (with the generation
    prompt) and the rendering that includes it, so its closing <|im_end|> is learnt too."""

    def ids(msgs: list[dict[str, str]], gen: bool) -> list[int]:
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    full = ids(messages, False)
    labels = [IGNORE] * len(full)
    for i, m in enumerate(messages):
        if m.get("role") != "assistant":
            continue
        start, end = len(ids(messages[:i], True)), len(ids(messages[: i + 1], False))
        for j in range(start, min(end, len(full))):
            labels[j] = full[j]
    return full[:max_length], labels[:max_length]


def collate(torch: Any, batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(ids)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def batch_loss(torch: Any, model: Any, batch: dict[str, Any]) -> tuple[Any, int]:
    """Mean cross-entropy over the batch's assistant tokens (shifted: token t predicts t+1)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    shift_logits = logits[:, :-1, :].reshape(-1, logits.shape[-1])
    shift_labels = batch["labels"][:, 1:].reshape(-1)
    n = int((shift_labels != IGNORE).sum())
    loss = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction="sum")
    return loss / max(n, 1), n


def epoch_order(torch: Any, n: int, seed: int, epoch: int) -> list[int]:
    g = torch.Generator()
    g.manual_seed(seed * 1000 + epoch)
    return torch.randperm(n, generator=g).tolist()


# ---------------------------------------------------------------------------------------------- training


class Trainer:
    def __init__(self, cfg: Config) -> None:
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import AutoModelForCausalLM, AutoTokenizer, get_linear_schedule_with_warmup

        self.torch, self.cfg = torch, cfg
        self.out = pathlib.Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        self.device = torch.device("cuda" if use_cuda else "cpu")
        torch.manual_seed(cfg.seed)
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.base_dir)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        base = AutoModelForCausalLM.from_pretrained(cfg.base_dir, dtype=torch.float32)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none")
        self.model = get_peft_model(base, lora).to(self.device)
        self.train = [encode(self.tokenizer, m, cfg.max_length) for m in read_examples(cfg.train_file)]
        self.valid = ([encode(self.tokenizer, m, cfg.max_length) for m in read_examples(cfg.validation_file)]
                      if cfg.validation_file else [])
        self.steps_per_epoch = math.ceil(len(self.train) / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
        warmup = int(self.total_steps * cfg.warmup_ratio)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, self.total_steps)
        self.step = 0  # optimizer steps done
        self.trained_tokens = 0
        self.curve: list[dict[str, Any]] = []  # {step, epoch, train_loss, valid_loss}
        self.stop_requested = False

    # --- checkpoints

    def trainable_state(self) -> dict[str, Any]:
        return {n: p.detach().cpu().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    def save_checkpoint(self) -> float:
        """Write the checkpoint; returns the seconds it took."""
        t0 = time.monotonic()
        torch = self.torch
        tmp = self.out / f".{CHECKPOINT}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        torch.save(self.trainable_state(), tmp / "adapter.pt")
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
                   tmp / "state.pt")
        (tmp / "position.json").write_text(json.dumps({
            "step": self.step, "trained_tokens": self.trained_tokens, "curve": self.curve,
            "total_steps": self.total_steps}))
        final = self.out / CHECKPOINT
        old = self.out / f".{CHECKPOINT}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)  # a crash leaves either the old or the new checkpoint whole
        shutil.rmtree(old, ignore_errors=True)
        return time.monotonic() - t0

    def load_checkpoint(self) -> bool:
        torch = self.torch
        ck = self.out / CHECKPOINT
        if not (ck / "position.json").exists():
            return False
        weights = torch.load(ck / "adapter.pt")
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value.to(self.device))
        state = torch.load(ck / "state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        pos = json.loads((ck / "position.json").read_text())
        self.step, self.trained_tokens, self.curve = pos["step"], pos["trained_tokens"], pos["curve"]
        return True

    # --- the loop

    def validation_loss(self) -> float | None:
        if not self.valid:
            return None
        torch = self.torch
        self.model.eval()
        total, count = 0.0, 0
        with torch.no_grad():
            for start in range(0, len(self.valid), self.cfg.batch_size):
                batch = collate(torch, self.valid[start : start + self.cfg.batch_size], self.pad_id)
                batch = {k: v.to(self.device) for k, v in batch.items()}
                loss, n = batch_loss(torch, self.model, batch)
                total, count = total + float(loss) * n, count + n
        self.model.train()
        return total / max(count, 1)

    def run(self) -> int:
        cfg, torch = self.cfg, self.torch
        t_restore = time.monotonic()
        resumed = self.load_checkpoint()
        emit("start", resumed=resumed, load_seconds=round(t_restore - STARTED, 3),
             restore_seconds=round(time.monotonic() - t_restore, 3), step=self.step, total_steps=self.total_steps,
             examples=len(self.train),
             validation_examples=len(self.valid), steps_per_epoch=self.steps_per_epoch, device=str(self.device),
             trainable_parameters=sum(p.numel() for p in self.model.parameters() if p.requires_grad))
        self.model.train()
        t0, tokens0, steps_this_run = time.monotonic(), self.trained_tokens, 0
        while self.step < self.total_steps:
            if self.stop_requested or (cfg.stop_after_steps and steps_this_run >= cfg.stop_after_steps):
                seconds = self.save_checkpoint()
                emit("paused", step=self.step, total_steps=self.total_steps, seconds=round(seconds, 3))
                return PAUSED_EXIT
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            order = epoch_order(torch, len(self.train), cfg.seed, epoch)
            idx = order[in_epoch * cfg.batch_size : (in_epoch + 1) * cfg.batch_size]
            batch = {k: v.to(self.device) for k, v in collate(torch, [self.train[i] for i in idx],
                                                               self.pad_id).items()}
            loss, _ = batch_loss(torch, self.model, batch)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            steps_this_run += 1
            self.trained_tokens += int(batch["attention_mask"].sum())
            point: dict[str, Any] = {"step": self.step, "epoch": epoch + 1, "train_loss": float(loss.detach()),
                                     "valid_loss": None}
            epoch_done = self.step % self.steps_per_epoch == 0
            if epoch_done:
                point["valid_loss"] = self.validation_loss()
            self.curve.append(point)
            elapsed = time.monotonic() - t0
            emit("step", step=self.step, total_steps=self.total_steps, epoch=epoch + 1, loss=float(loss.detach()),
                 lr=self.scheduler.get_last_lr()[0], tokens=self.trained_tokens,
                 tokens_per_s=(self.trained_tokens - tokens0) / elapsed if elapsed else None,
                 log=self.step % max(cfg.log_every, 1) == 0)
            if epoch_done:
                losses = [p["train_loss"] for p in self.curve if p["epoch"] == epoch + 1]
                emit("epoch", epoch=epoch + 1, epochs=cfg.epochs, loss=sum(losses) / len(losses),
                     valid_loss=point["valid_loss"])
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.total_steps:
                seconds = self.save_checkpoint()
                emit("checkpoint", step=self.step, seconds=round(seconds, 3))
        self.finish()
        return 0

    def finish(self) -> None:
        torch = self.torch
        adapter = self.out / ADAPTER
        self.model.save_pretrained(str(adapter))
        torch.save(self.trainable_state(), adapter / "trainable.pt")
        (self.out / "metrics.json").write_text(json.dumps(self.curve))
        merged, t_merge = None, time.monotonic()
        if self.cfg.merge:
            model = self.model.merge_and_unload()
            target = self.out / MERGED
            model.to("cpu").save_pretrained(str(target))
            self.tokenizer.save_pretrained(str(target))
            template = pathlib.Path(self.cfg.base_dir) / "chat_template.jinja"
            if template.exists():
                shutil.copy2(template, target / "chat_template.jinja")
            merged = str(target)
        emit("done", step=self.step, total_steps=self.total_steps, trained_tokens=self.trained_tokens,
             adapter=str(adapter), merged=merged, merge_seconds=round(time.monotonic() - t_merge, 3),
             final_loss=self.curve[-1]["train_loss"] if self.curve else None)


def main(argv: list[str]) -> int:
    _die_with_parent()
    cfg = Config(**json.loads(pathlib.Path(argv[1]).read_text()))
    trainer: Trainer | None = None

    def stop(signum: int, frame: Any) -> None:
        if trainer is not None:
            trainer.stop_requested = True
        else:  # still loading: nothing to checkpoint, a fresh start later is the same run
            emit("paused", step=0, total_steps=None)
            os._exit(PAUSED_EXIT)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGUSR1, stop)
    try:
        trainer = Trainer(cfg)
        return trainer.run()
    except Exception as exc:  # reported as a line, so the worker can fail the job with the reason
        emit("error", message=f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    sys.exit(main(sys.argv))
