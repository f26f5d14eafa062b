"""A model artifact on disk as serving needs it: the manifest (`llmlab-model.json`), its checks, the cache lookup.

The importer (services/inference/importer) writes artifacts; the service, the Triton backend and the registry only
read them through this module, which imports nothing but the standard library.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import pathlib
import re
from dataclasses import asdict, dataclass
from typing import Any

MANIFEST_NAME = "llmlab-model.json"
MANIFEST_VERSION = 1

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MODEL_ID = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")  # ":": fine-tuned models (docs/training.md)


class ManifestError(ValueError):
    """A manifest is missing, malformed or does not match the files beside it."""


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
class CachedArtifact:
    """A published artifact in the model cache: its directory and its manifest (the engine loads its files as an
    `engine.ModelArtifact`)."""

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


def default_cache_dir() -> pathlib.Path:
    env = os.environ.get("LLMLAB_MODEL_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "llmlab" / "models"


def find_cached(model_id: str, cache_dir: pathlib.Path | None = None, *, deep: bool = False) -> CachedArtifact | None:
    """The published artifact of `model_id` when its manifest is valid and its files match; else None."""
    return _valid_artifact((cache_dir or default_cache_dir()) / model_id, model_id, deep=deep)


def _valid_artifact(directory: pathlib.Path, model_id: str, *, deep: bool = False) -> CachedArtifact | None:
    try:
        manifest = read_manifest(directory)
        if manifest.id != model_id:
            raise ManifestError(f"manifest id {manifest.id!r} is not {model_id!r}")
        verify_artifact(directory, manifest, deep=deep)
    except ManifestError:
        return None
    return CachedArtifact(directory, manifest)


# ------------------------------------------------------------------------------------------- precision variants
#
# One model, several precisions built from the same source weights (docs: services/inference/README.md,
# "Quantization on load"). The imported artifact lives in `<cache>/<id>/` in the catalogue's precision (int8); any
# other precision is a variant in `<cache>/<id>@<quantization>/` with a manifest of its own. `@` cannot occur in
# a model slug, so a variant's directory never collides with another model's.

# Canonical precision names (what manifests, the registry and responses say) and the spellings the API accepts.
QUANTIZATIONS = ("int4", "int8", "fp32")
QUANTIZATION_ALIASES = {
    "int4": "int4", "q4_0": "int4", "q4": "int4",
    "int8": "int8", "q8_0": "int8", "q8": "int8",
    "fp32": "fp32", "f32": "fp32", "float32": "fp32",
}  # fmt: skip


def canonical_quantization(name: str) -> str | None:
    """`q4_0` -> `int4` (case and surrounding spaces ignored); None for a spelling we do not build."""
    return QUANTIZATION_ALIASES.get(name.strip().lower())


def variant_dir(model_id: str, quantization: str, cache_dir: pathlib.Path | None = None) -> pathlib.Path:
    """Where the `quantization` variant of `model_id` is published (a canonical name; see QUANTIZATIONS)."""
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {quantization!r}")
    return (cache_dir or default_cache_dir()) / f"{model_id}@{quantization}"


def find_variant(
    model_id: str, quantization: str, cache_dir: pathlib.Path | None = None, *, deep: bool = False
) -> CachedArtifact | None:
    """The cached artifact of `model_id` in `quantization`: the imported one when it has that precision, else the
    published variant; None when neither exists (or its files do not match its manifest)."""
    imported = find_cached(model_id, cache_dir, deep=deep)
    if imported is not None and imported.manifest.quantization == quantization:
        return imported
    variant = _valid_artifact(variant_dir(model_id, quantization, cache_dir), model_id, deep=deep)
    if variant is not None and variant.manifest.quantization == quantization:
        return variant
    return None

