"""The model importer (a command-line tool, not part of serving): GGUF -> the served ONNX artifact in the cache.

    python -m services.inference.importer [--model smollm2-135m-instruct] [--cache DIR] [--force] [--verify]

Serving reads artifacts through services.inference.artifacts and never imports this package.
"""

from ..artifacts import (
    MANIFEST_NAME,
    CachedArtifact,
    Manifest,
    ManifestError,
    default_cache_dir,
    find_cached,
    read_manifest,
    verify_artifact,
)
from .catalogue import CATALOGUE, DEFAULT_MODEL, CatalogueEntry
from .convert import build_manifest, format_model_size, import_model, main, publish
from .toolchain import ImportFailed

__all__ = [
    "CATALOGUE",
    "DEFAULT_MODEL",
    "MANIFEST_NAME",
    "CachedArtifact",
    "CatalogueEntry",
    "ImportFailed",
    "Manifest",
    "ManifestError",
    "build_manifest",
    "default_cache_dir",
    "find_cached",
    "format_model_size",
    "import_model",
    "main",
    "publish",
    "read_manifest",
    "verify_artifact",
]
