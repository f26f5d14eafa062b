"""The model catalogue: providers and how the platform reaches their models, and the request values both model
API families share (names, backend objects, the research family's config columns), checked before the registry
stores them."""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from llmlab.runtime import InvalidArgument, validation_error
from llmlab.sampling import check_sampling

from .registry import BACKENDS, SECRET_KEYS, validate_backend

MAX_NAME_LENGTH = 255

# Providers whose name says how the platform reaches their models; any other provider is a label, and its models
# are served through the `backend` object of their config (or not at all, status "unavailable").
PROVIDER_BACKENDS = {"local": "onnx", "triton": "triton", "openai-compatible": "openai"}
_BACKEND_ALIASES = {"local": "onnx", "onnxruntime": "onnx", "openai-compatible": "openai"}


@dataclass(frozen=True)
class Provider:
    """How `GET /models/providers` describes a provider."""

    display_name: str
    description: str


BUILTIN_PROVIDERS = {
    "local": Provider(
        "Local (ONNX Runtime)",
        "Models served in process by llmlab's continuous-batching engine on ONNX Runtime (CPU, or CUDA where a GPU "
        "exists)",
    ),
    "triton": Provider(
        "NVIDIA Triton",
        "Models served by an NVIDIA Triton Inference Server over its gRPC (KServe v2) protocol, with token streaming",
    ),
    "openai-compatible": Provider(
        "OpenAI-compatible",
        "Any server that speaks the OpenAI API (OpenAI, vLLM, Ollama, ...) at a registered base_url, with the key "
        "read from a named environment variable",
    ),
}
KNOWN_PROVIDER_NAMES = {
    "openai": "OpenAI", "anthropic": "Anthropic", "google": "Google AI", "mistral": "Mistral AI", "meta": "Meta",
    "cohere": "Cohere", "huggingface": "Hugging Face", "ollama": "Ollama", "vllm": "vLLM", "azure": "Azure OpenAI",
}  # fmt: skip
SERVED_THROUGH = {
    "onnx": "the in-process ONNX Runtime engine",
    "triton": "NVIDIA Triton",
    "openai": "an OpenAI-compatible endpoint",
}

# Status spellings (registry.py: canonical lower-case in the DB, each family renders its own).

# --- proto -> plain values ------------------------------------------------------------------------------------


def struct_field(msg: Any, name: str) -> dict[str, Any] | None:
    """A Struct field as a dict, or None when the request did not carry it."""
    return json_format.MessageToDict(getattr(msg, name)) if msg.HasField(name) else None


def optional(msg: Any, name: str) -> Any:
    return getattr(msg, name) if msg.HasField(name) else None


def as_positive_int(field: str, v: Any, constraint: str = "must be a positive integer") -> int:
    """A JSON number (always a double in a Struct) that must be a positive integer."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 1:
        raise validation_error(field, v, constraint)
    return int(v)


def as_cost(field: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
        raise validation_error(field, v, "must be a non-negative number")
    return float(v)



def require_name(field: str, v: str, limit: int = MAX_NAME_LENGTH) -> str:
    """A name as stored: trimmed, with at least one visible character (not only spaces or zero-width ones), at most
    `limit` characters, no NUL (Postgres refuses it)."""
    if "\x00" in v:
        raise validation_error(field, v, "must not contain NUL characters")
    text = v.strip()
    if not any(unicodedata.category(c)[0] not in "ZC" for c in text):
        raise validation_error(field, v, "is required (at least one visible character)")
    if len(text) > limit:
        raise validation_error(field, v, f"must be at most {limit} characters")
    return text


def capabilities_list(field: str, v: Any) -> list[str]:
    if not isinstance(v, list) or not all(isinstance(c, str) and c.strip() for c in v):
        raise validation_error(field, v, "must be a list of non-empty strings")
    return [c.strip() for c in v]


def backend_from(obj: Any, provider: str, field: str) -> dict[str, Any]:
    """The registry columns (`backend`, `backend_config`, `format`) for a `backend` object of a request.

    `{"type": "openai", "base_url": "https://host/v1", "api_key_env": "NAME", "model": "upstream-name"}` or
    `{"type": "triton", "url": "host:8001", "model_name": "smollm2"}`; `type` defaults from the provider (local,
    triton, openai-compatible) or from the keys given (`base_url` -> openai, `url` -> triton)."""
    if not isinstance(obj, dict):
        raise validation_error(field, obj, "must be an object")
    config = dict(obj)
    kind = config.pop("type", None) or PROVIDER_BACKENDS.get(provider)
    if kind is None:
        kind = "openai" if "base_url" in config else "triton" if "url" in config else None
    kind = _BACKEND_ALIASES.get(kind, kind) if isinstance(kind, str) else kind
    if kind not in BACKENDS:
        raise validation_error(f"{field}.type", kind, f"must be one of {', '.join(BACKENDS)}")
    for key in ("timeout_s", "connect_timeout_s"):
        if key in config and (
            isinstance(config[key], bool) or not isinstance(config[key], int | float) or config[key] <= 0
        ):
            raise validation_error(f"{field}.{key}", config[key], "must be a positive number of seconds")
    try:
        validate_backend(kind, config)
    except InvalidArgument as exc:
        raise _renamed(exc, "backend_config", field, config) from None
    return {"backend": kind, "backend_config": config, "format": "onnx" if kind == "onnx" else "remote"}


def in_process() -> dict[str, Any]:
    """The serving columns of a model without a `backend` object: the engine of this replica."""
    return {"backend": "onnx", "backend_config": {}, "format": "onnx"}


def serving_from(obj: Any, provider: str, field: str) -> dict[str, Any] | None:
    """The registry's serving columns from a request's `backend` object (see backend_from); None when there is
    none and the provider does not need one. Triton and OpenAI-compatible providers must say where they serve."""
    if obj is not None:
        return backend_from(obj, provider, field)
    if provider in ("triton", "openai-compatible"):
        raise validation_error(
            field, None, f"is required for provider {provider}",
            message=f"A {provider} model needs {field} to say where it is served",
        )
    return None


def _renamed(exc: InvalidArgument, prefix: str, field: str, values: Mapping[str, Any]) -> InvalidArgument:
    """A registry validation error about `<prefix>.<key>` as `validation_error` on `<field>.<key>`."""
    if not exc.field_violations:
        return exc
    name, constraint = exc.field_violations[0]
    key = name.removeprefix(f"{prefix}.")
    secret = key.lower().replace("-", "_") in SECRET_KEYS
    return validation_error(
        f"{field}.{key}", "[redacted]" if secret else values.get(key), constraint, message=exc.message
    )


def registry_error(exc: InvalidArgument, values: Mapping[str, Any]) -> InvalidArgument:
    """A registry validation error as `validation_error` with its details (field, value, constraint)."""
    if not exc.field_violations:
        return exc
    name, constraint = exc.field_violations[0]
    return validation_error(name, values.get(name), constraint, message=exc.message)


def check_generation_defaults(field: str, params: Mapping[str, Any]) -> None:
    """Default generation parameters a model stores must be ones GenerateLabText accepts (llmlab.sampling)."""
    check_sampling({k: params.get(k) for k in LAB_SAMPLING if k in params}, prefix=f"{field}.", aliases=LAB_SAMPLING)


# The lab family's generation fields and the sampling parameters they stand for.
LAB_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "max_length": "max_tokens"}


def research_columns(config: Mapping[str, Any], field: str = "config") -> dict[str, Any]:
    """Registry columns that the research family's free-form `config` determines (so the other families see them)."""
    out: dict[str, Any] = {}
    for key in ("max_context_window", "context_window"):
        if config.get(key) is not None:
            out["context_window"] = as_positive_int(f"{field}.{key}", config[key])
    for key in ("max_output_tokens", "max_tokens"):
        if config.get(key) is not None:
            out["max_tokens"] = as_positive_int(f"{field}.{key}", config[key])
    pricing = config.get("pricing")
    if pricing is not None:
        if not isinstance(pricing, dict):
            raise validation_error(f"{field}.pricing", pricing, "must be an object")
        per_million = {
            k: as_cost(f"{field}.pricing.{k}", pricing.get(k, 0)) for k in ("input_per_million", "output_per_million")
        }
        out["input_cost_per_token"] = per_million["input_per_million"] / 1e6
        out["output_cost_per_token"] = per_million["output_per_million"] / 1e6
        out["cost_per_token"] = (out["input_cost_per_token"] + out["output_cost_per_token"]) / 2
    if config.get("capabilities") is not None:
        out["capabilities"] = capabilities_list(f"{field}.capabilities", config["capabilities"])
        out["category"] = "chat" if "chat" in out["capabilities"] else "text-generation"
    return out


