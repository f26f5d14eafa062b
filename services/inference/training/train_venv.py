"""The training venv: torch (the CPU wheel, or CUDA where the machine has one), transformers and peft, created on
first use beside the conversion venv by the importer's one venv helper (importer/toolchain.ensure_venv).

    <cache>/.venv-train          ($LLMLAB_TRAINING_VENV overrides)

The service and the worker never import torch: the worker runs `trainer.py` by path with this venv's python."""

from __future__ import annotations

import os
import pathlib

from ..artifacts import default_cache_dir
from ..importer.toolchain import CONVERT_REQUIREMENTS, Progress, ensure_venv

# torch and transformers are the conversion venv's pins (one checkpoint format, one tokenizer), plus peft.
TRAIN_REQUIREMENTS: dict[str, str] = {
    "torch": CONVERT_REQUIREMENTS["torch"],
    "transformers": CONVERT_REQUIREMENTS["transformers"],
    "accelerate": CONVERT_REQUIREMENTS["accelerate"],
    "peft": "0.21.2",
}
TRAIN_IMPORTS = ("torch", "transformers", "peft")


def train_venv_dir(cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    explicit = os.environ.get("LLMLAB_TRAINING_VENV")
    if explicit:
        return pathlib.Path(explicit)
    return (cache_dir or default_cache_dir()).expanduser() / ".venv-train"


def ensure_train_venv(cache_dir: pathlib.Path | None = None, progress: Progress = print) -> pathlib.Path:
    """The training venv's python, creating or repairing the venv first (a minute or two the first time)."""
    venv = train_venv_dir(cache_dir)
    logs = (cache_dir or default_cache_dir()).expanduser() / ".logs" / "training"
    return ensure_venv(venv, logs, progress, TRAIN_REQUIREMENTS, TRAIN_IMPORTS)
