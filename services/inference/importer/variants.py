"""Weight-only precision variants derived from the fp32 variant: int4 (MatMulNBits, Q4_0's layout).

The fp32 variant is the one build of the source weights at full precision (the GGUF dequantised, run through the
builder without quantising); every lower precision is computed from it, so all variants of a model come from the
same weights and a new one takes seconds rather than a GGUF -> HF conversion. The quantisation itself runs in the
conversion venv (quantize_nbits.py); the result is published like any import, manifest last, renamed into place.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import pathlib
import shutil
import time
import uuid

from ..artifacts import CachedArtifact, Manifest
from .catalogue import CatalogueEntry
from .convert import _sha_files, publish
from .toolchain import ImportFailed, Progress, ensure_venv, resolve_venv, run_logged

QUANTIZE_NBITS = pathlib.Path(__file__).with_name("quantize_nbits.py")  # run by path in the conversion venv
BLOCK_SIZE = 32  # weights per scale: llama.cpp's Q4_0 block, and the builder's int8 block
BITS = {"int4": 4}
# Files of the fp32 artifact the variant keeps as they are (the graph and its weights are rewritten).
_COPIED = ("genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def derive_nbits(
    entry: CatalogueEntry,
    source: CachedArtifact,
    quantization: str,
    cache_dir: pathlib.Path,
    target: pathlib.Path,
    venv: pathlib.Path | None,
    progress: Progress,
) -> CachedArtifact:
    """Quantise `source` (the fp32 variant) to `quantization` and publish it at `target`."""
    bits = BITS.get(quantization)
    if bits is None:
        raise ImportFailed(f"{quantization} is not derived from fp32 (derived: {', '.join(BITS)})")
    if source.manifest.quantization != "fp32":
        raise ImportFailed(f"{source.path} is {source.manifest.quantization}, not fp32")
    t_start = time.monotonic()
    tag = f"{entry.id}@{quantization}"
    work_root = cache_dir / ".work"
    for stale in work_root.glob(f"{tag}-*"):  # we hold this variant's lock: leftovers of an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    work = work_root / f"{tag}-{uuid.uuid4().hex[:8]}"
    out = work / "out"
    logs = cache_dir / ".logs" / entry.id
    out.mkdir(parents=True)
    try:
        python = ensure_venv(resolve_venv(cache_dir, venv), logs, progress)
        progress(f"[1/2] {quantization}: MatMul weights of {source.path.name} to {bits} bits, blocks of {BLOCK_SIZE}")
        text = run_logged(
            [str(python), str(QUANTIZE_NBITS), str(source.file(source.manifest.model_file)), str(out / "model.onnx"),
             str(bits), str(BLOCK_SIZE)],
            logs / f"quantize-{quantization}.log", progress, f"{quantization} quantisation",
        )  # fmt: skip
        results = [ln.split(" ", 1)[1] for ln in text.splitlines() if ln.startswith("LLMLAB_RESULT ")]
        if not results:
            raise ImportFailed(f"the quantiser printed no result; log: {logs / f'quantize-{quantization}.log'}")
        info = json.loads(results[-1])
        progress(f"  {info['quantized']} of {info['matmuls']} MatMuls quantised ({info['seconds']} s)")
        for name in _COPIED:
            if source.file(name).exists():
                shutil.copy2(source.file(name), out / name)
        progress(f"[2/2] {quantization}: manifest and publish")
        manifest = _variant_manifest(source.manifest, quantization, out, info, _sha_files(out))
        path = publish(out, manifest, cache_dir, target)
        progress(f"{quantization} variant built at {path} in {time.monotonic() - t_start:.0f} s "
                 f"({manifest.total_bytes / 1e6:.0f} MB)")
        return CachedArtifact(path, manifest)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _variant_manifest(base: Manifest, quantization: str, out: pathlib.Path, info: dict, files) -> Manifest:
    """The fp32 manifest with the new precision, files and provenance (which fp32 graph it was computed from)."""
    model_sha = next(f.sha256 for f in base.files if f.path == base.model_file)
    data_sha = next((f.sha256 for f in base.files if f.path == base.model_file + ".data"), "")
    source = {**base.source, "derived_from": "fp32", "derived_from_model_sha256": model_sha}
    if data_sha:
        source["derived_from_data_sha256"] = data_sha
    converter = {
        **base.converter,
        "onnxruntime": str(info["onnxruntime"]),
        "quantizer": f"MatMulNBits bits={info['bits']} block_size={info['block_size']} symmetric accuracy_level=4",
    }
    created = dt.datetime.now(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    description = base.description.replace("fp32", quantization)
    return dataclasses.replace(
        base, quantization=quantization, source=source, converter=converter, files=tuple(files),
        created_at=created, description=description,
    )  # fmt: skip
