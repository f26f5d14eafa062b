"""The importer's pipeline at both ends of a training job (docs/training.md "Closing the loop"):

- `base_checkpoint`: the base model's Hugging Face fp32 checkpoint, which training starts from — the importer's
  steps (a)-(c) (GGUF, sha256 check, GGUF -> HF in the conversion venv), kept in `<cache>/.hf/<model-id>` instead of
  being deleted after the ONNX build.
- `publish_merged`: a merged fine-tuned checkpoint -> the served artifact, through the importer's step (d)
  (`convert.build_onnx`, int8 for CPU) and `convert.publish` (manifest written last, renamed into place).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import uuid

from ..artifacts import CachedArtifact, default_cache_dir, find_cached
from ..importer.catalogue import CATALOGUE, CatalogueEntry
from ..importer.convert import _locked, build_manifest, build_onnx, check_gguf, obtain_gguf, publish
from ..importer.gguf_to_hf import RESULT_PREFIX
from ..importer.toolchain import CONVERT_REQUIREMENTS, ImportFailed, Progress, ensure_venv, resolve_venv, run_logged

GGUF_TO_HF = pathlib.Path(__file__).resolve().parents[1] / "importer" / "gguf_to_hf.py"
HF_INFO = "llmlab-hf.json"  # written last into a finished fp32 checkpoint


def _cache(cache_dir: pathlib.Path | None) -> pathlib.Path:
    return (cache_dir or default_cache_dir()).expanduser().resolve()


def base_entry(model_id: str) -> CatalogueEntry:
    entry = CATALOGUE.get(model_id)
    if entry is None:
        raise ImportFailed(f"{model_id!r} has no importable weights; trainable: {', '.join(sorted(CATALOGUE))}")
    return entry


def base_checkpoint(model_id: str, cache_dir: pathlib.Path | None = None, progress: Progress = print) -> pathlib.Path:
    """`<cache>/.hf/<model-id>`: the fp32 HF checkpoint of a catalogue model, built once (about a minute)."""
    entry = base_entry(model_id)
    cache = _cache(cache_dir)
    target = cache / ".hf" / model_id
    if (target / HF_INFO).is_file():
        return target
    with _locked(cache / f".{model_id}.hf.lock"):
        if (target / HF_INFO).is_file():
            return target
        logs = cache / ".logs" / model_id
        venv = resolve_venv(cache, None)
        source = obtain_gguf(entry, cache, progress, venv_python=venv / "bin" / "python")
        check_gguf(entry, source, progress)
        python = ensure_venv(venv, logs, progress)
        work = cache / ".work" / f"{model_id}-hf-{uuid.uuid4().hex[:8]}"
        try:
            text = run_logged([str(python), str(GGUF_TO_HF), str(source.gguf), str(work)],
                              logs / "gguf_to_hf.log", progress, "GGUF -> HF")
            results = [ln[len(RESULT_PREFIX):] for ln in text.splitlines() if ln.startswith(RESULT_PREFIX)]
            if not results:
                raise ImportFailed(f"GGUF -> HF printed no result; log: {logs / 'gguf_to_hf.log'}")
            (work / HF_INFO).write_text(results[-1])
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def publish_merged(
    merged: pathlib.Path,
    *,
    model_id: str,
    name: str,
    description: str,
    base_model_id: str,
    cache_dir: pathlib.Path | None = None,
    progress: Progress = print,
) -> CachedArtifact:
    """The merged checkpoint as the served int8 ONNX artifact `<cache>/<model_id>` (idempotent: an artifact already
    published under that id is returned as it is)."""
    cache = _cache(cache_dir)
    done = find_cached(model_id, cache)
    if done is not None:
        return done
    base = base_entry(base_model_id)
    hf_info = json.loads((cache / ".hf" / base_model_id / HF_INFO).read_text())
    entry = dataclasses.replace(base, id=model_id, name=name, description=description)
    logs = cache / ".logs" / model_id
    with _locked(cache / f".{model_id}.lock"):
        done = find_cached(model_id, cache)
        if done is not None:
            return done
        python = ensure_venv(resolve_venv(cache, None), logs, progress)
        work = cache / ".work" / f"{model_id}-{uuid.uuid4().hex[:8]}"
        out = work / "out"
        try:
            work.mkdir(parents=True)
            build_onnx(python, merged, out, entry, work, logs, progress)
            converter = {"torch": hf_info["torch"], "transformers": hf_info["transformers"]}
            converter.update({d: v for d, v in CONVERT_REQUIREMENTS.items() if d not in converter})
            manifest = build_manifest(entry, out, source_version=base.package_version,
                                      gguf_sha256=base.gguf_sha256, hf_info=hf_info, converter=converter)
            path = publish(out, manifest, cache)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return CachedArtifact(path, manifest)
