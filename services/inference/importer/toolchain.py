"""The conversion venv: the pinned toolchain (torch, transformers, the onnxruntime-genai builder), created or
repaired on demand, and running its steps with their output in a log file."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]

Progress = Callable[[str], None]

# The conversion toolchain, pinned to the versions the artifact was verified with (the engine depends on the
# builder's graph signature). torch must stay pinned: pip resolves 2.13.0 to the CPU wheel on local disk,
# while an unpinned torch would pull gigabytes of CUDA wheels.
CONVERT_REQUIREMENTS: dict[str, str] = {
    "torch": "2.13.0",
    "transformers": "5.23.0",
    "gguf": "0.19.0",
    "accelerate": "1.15.0",
    "onnxruntime-genai": "0.18.0",
    "onnx": "1.23.2",
    "onnx-ir": "1.1.0",
}
# Import names that must load in the conversion venv (onnx_ir is needed by the builder but not pulled in by it).
CONVERT_IMPORTS = ("torch", "transformers", "gguf", "accelerate", "onnxruntime_genai", "onnx", "onnx_ir")


class ImportFailed(RuntimeError):
    """The import cannot complete; the message says why and where the logs are."""


def venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def _probe_venv(
    python: pathlib.Path,
    requirements: dict[str, str] = CONVERT_REQUIREMENTS,
    imports: tuple[str, ...] = CONVERT_IMPORTS,
) -> dict[str, str | None]:
    """Installed versions of the pinned distributions in a venv (None when missing or not importable)."""
    probe = (
        "import importlib, importlib.metadata as m, json, sys\n"
        "dists, mods = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n"
        "out = {}\n"
        "for d in dists:\n"
        "    try: out[d] = m.version(d)\n"
        "    except m.PackageNotFoundError: out[d] = None\n"
        "for name in mods:\n"
        "    try: importlib.import_module(name)\n"
        "    except Exception as e: out['import:' + name] = repr(e)\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run(
        [str(python), "-c", probe, json.dumps(list(requirements)), json.dumps(list(imports))],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return dict.fromkeys(requirements)
    return json.loads(done.stdout)


def venv_problems(found: dict[str, str | None], requirements: dict[str, str] = CONVERT_REQUIREMENTS) -> list[str]:
    problems = []
    for dist, want in requirements.items():
        have = found.get(dist)
        # A local-version suffix is the same release: 2.13.0+cpu is torch 2.13.0.
        if have is None or have.split("+")[0] != want:
            problems.append(f"{dist} {have or 'missing'} (want {want})")
    problems += [f"{k[7:]} does not import: {v}" for k, v in found.items() if k.startswith("import:")]
    return problems


def resolve_venv(cache_dir: pathlib.Path, explicit: pathlib.Path | None) -> pathlib.Path:
    """`--venv`, else the repo's `.venv-convert` when it exists, else `<cache>/.venv-convert`."""
    if explicit is not None:
        return explicit
    repo_venv = REPO_ROOT / ".venv-convert"
    if venv_python(repo_venv).exists():
        return repo_venv
    return cache_dir / ".venv-convert"


def ensure_venv(
    venv: pathlib.Path,
    logs: pathlib.Path,
    progress: Progress,
    requirements: dict[str, str] = CONVERT_REQUIREMENTS,
    imports: tuple[str, ...] = CONVERT_IMPORTS,
) -> pathlib.Path:
    """Step (b): create/reuse the conversion venv and install the pinned toolchain where anything is off.

    The training worker's venv (services/inference/training/train_venv.py) is made here too, with its own pins."""
    python = venv_python(venv)
    fresh = not python.exists()
    if fresh:
        progress(f"venv: creating {venv} (first import only)")
        done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ImportFailed(f"python -m venv {venv} failed: {done.stderr[-2000:]}")
    problems = venv_problems(_probe_venv(python, requirements, imports), requirements)
    if not problems:
        progress(f"venv: reusing {venv} (torch {requirements['torch']} and its toolchain)")
        return python
    pins = ", ".join(f"{d}=={v}" for d, v in requirements.items())
    why = "" if fresh else f" ({'; '.join(problems)})"
    progress(f"venv: installing {pins} into {venv}{why}; a minute or more")
    reqs = [f"{d}=={v}" for d, v in requirements.items()]
    run_logged([str(python), "-m", "pip", "install", *reqs], logs / "pip.log", progress, "pip install")
    problems = venv_problems(_probe_venv(python, requirements, imports), requirements)
    if problems:
        raise ImportFailed(f"the venv {venv} is still unusable after pip install: {'; '.join(problems)}")
    return python


def run_logged(
    cmd: list[str], log: pathlib.Path, progress: Progress, what: str, *, heartbeat_s: float = 15.0, env=None
) -> str:
    """Run `cmd` with its output in `log` (the builder's progress bars are huge); print a line every
    `heartbeat_s` while it runs. Returns the log's text; raises ImportFailed with its tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(heartbeat_s):
                progress(f"  ... {what} running, {time.monotonic() - t0:.0f} s")

        ticker = threading.Thread(target=beat, daemon=True)
        ticker.start()
        try:
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            stop.set()
            ticker.join()
    text = log.read_text(errors="replace")
    if rc != 0:
        tail = "\n".join(text.splitlines()[-25:])
        raise ImportFailed(f"{what} failed (exit {rc}); log: {log}\n{tail}")
    return text
