"""Precision names and variant lookup (services/inference/artifacts.py): the aliases the load endpoint accepts,
where each variant lives in the model cache, and which cached artifact serves a precision."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from services.inference.artifacts import (
    MANIFEST_NAME,
    QUANTIZATION_ALIASES,
    QUANTIZATIONS,
    ArtifactFile,
    Manifest,
    canonical_quantization,
    find_variant,
    sha256_file,
    variant_dir,
)
from services.inference.importer import ImportFailed, import_model

MODEL = "smollm2-135m-instruct"


@pytest.mark.parametrize(("given", "canonical"), [
    ("q4_0", "int4"), ("int4", "int4"), ("Q4_0", "int4"), (" q4_0 ", "int4"),
    ("q8_0", "int8"), ("int8", "int8"), ("INT8", "int8"),
    ("fp32", "fp32"), ("f32", "fp32"), ("float32", "fp32"),
])  # fmt: skip
def test_aliases_map_to_the_canonical_names(given, canonical):
    assert canonical_quantization(given) == canonical


@pytest.mark.parametrize("given", ["", "q4_k_m", "q3_k", "fp16", "bf16", "int2", "4", "q4_1", "gguf"])
def test_spellings_we_do_not_build_are_unknown(given):
    assert canonical_quantization(given) is None


def test_every_alias_names_a_built_precision():
    assert set(QUANTIZATION_ALIASES.values()) == set(QUANTIZATIONS)


def test_a_variant_lives_beside_the_import_under_a_name_no_model_slug_can_take(tmp_path):
    assert variant_dir(MODEL, "int4", tmp_path) == tmp_path / f"{MODEL}@int4"
    assert variant_dir(MODEL, "fp32", tmp_path).name == f"{MODEL}@fp32"
    with pytest.raises(ValueError, match="unknown quantization"):
        variant_dir(MODEL, "q4_0", tmp_path)  # aliases are resolved before, never spelled in paths


def _publish(directory: pathlib.Path, quantization: str, model_id: str = MODEL) -> None:
    directory.mkdir(parents=True)
    names = ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja")
    for name in names:
        (directory / name).write_text(f"{name} {quantization}")
    files = tuple(ArtifactFile(n, (directory / n).stat().st_size, sha256_file(directory / n)) for n in names)
    manifest = Manifest(
        id=model_id, name="m", description="", format="onnx", quantization=quantization, execution_provider="cpu",
        context_window=8192, parameter_count=134515008, model_size="135M", architecture="LlamaForCausalLM",
        vocab_size=49152, bos_token_id=1, eos_token_id=2, base_model="b", license="apache-2.0",
        capabilities=("chat",), languages=("en",),
        source={"package": "p", "version": "1", "filename": "f.gguf", "gguf_sha256": "0" * 64},
        converter={}, files=files, created_at="2026-01-01T00:00:00Z",
    )  # fmt: skip
    (directory / MANIFEST_NAME).write_text(json.dumps(manifest.to_dict()))


def test_the_import_serves_its_own_precision_and_variants_the_others(tmp_path):
    _publish(tmp_path / MODEL, "int8")
    _publish(tmp_path / f"{MODEL}@int4", "int4")
    assert find_variant(MODEL, "int8", tmp_path).path == tmp_path / MODEL
    assert find_variant(MODEL, "int4", tmp_path).path == tmp_path / f"{MODEL}@int4"
    assert find_variant(MODEL, "fp32", tmp_path) is None


def test_a_variant_whose_manifest_says_another_precision_or_model_is_not_used(tmp_path):
    _publish(tmp_path / MODEL, "int8")
    _publish(tmp_path / f"{MODEL}@int4", "fp32")
    _publish(tmp_path / f"{MODEL}@fp32", "fp32", model_id="other-model")
    assert find_variant(MODEL, "int4", tmp_path) is None
    assert find_variant(MODEL, "fp32", tmp_path) is None


def test_a_variant_with_a_file_missing_is_not_used(tmp_path):
    _publish(tmp_path / f"{MODEL}@int4", "int4")
    (tmp_path / f"{MODEL}@int4" / "model.onnx").unlink()
    assert find_variant(MODEL, "int4", tmp_path) is None


def test_the_importer_refuses_a_precision_it_does_not_build(tmp_path):
    with pytest.raises(ImportFailed, match="unknown quantization 'q3_k'"):
        import_model(MODEL, tmp_path, quantization="q3_k")


def test_a_derived_manifest_keeps_its_provenance():
    from services.inference.importer.variants import _variant_manifest

    base = Manifest.from_dict(json.loads(json.dumps(_manifest_dict("fp32"))))
    files = (ArtifactFile("model.onnx", 1, "a" * 64), *base.files[1:])
    info = {"onnxruntime": "1.32.0", "bits": 4, "block_size": 32}
    derived = _variant_manifest(base, "int4", pathlib.Path("."), info, files)
    assert derived.quantization == "int4" and derived.files == files
    assert derived.source["derived_from"] == "fp32" and derived.source["derived_from_model_sha256"] == "b" * 64
    assert derived.source["gguf_sha256"] == base.source["gguf_sha256"]
    assert "bits=4 block_size=32" in derived.converter["quantizer"]
    assert Manifest.from_dict(derived.to_dict()) == dataclasses.replace(derived)


def _manifest_dict(quantization: str) -> dict:
    names = ("model.onnx", "genai_config.json", "tokenizer.json", "chat_template.jinja")
    return {
        "manifest_version": 1, "id": MODEL, "name": "m", "description": "", "format": "onnx",
        "quantization": quantization, "execution_provider": "cpu", "context_window": 8192,
        "parameter_count": 1, "model_size": "135M", "architecture": "a", "vocab_size": 49152, "bos_token_id": 1,
        "eos_token_id": 2, "base_model": "b", "license": "l", "capabilities": [], "languages": [],
        "source": {"package": "p", "version": "1", "filename": "f", "gguf_sha256": "0" * 64},
        "files": [{"path": n, "size": 1, "sha256": "b" * 64} for n in names], "created_at": "2026-01-01T00:00:00Z",
    }  # fmt: skip
