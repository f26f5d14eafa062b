"""SamplingParams from a request proto's sampling fields: the one reading shared by the native API's generate,
stream and batch items and the internal InferenceService's `sampling` message."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from google.protobuf.message import Message

from llmlab.sampling import check_sampling

from .domain import SamplingParams

# SamplingParams fields a proto may carry under the same name (stop is repeated; logprobs is derived).
_SCALARS = tuple(f.name for f in fields(SamplingParams) if f.name not in ("stop", "stop_token_ids", "logprobs"))


def sampling_from_proto(msg: Message, defaults: Mapping[str, Any], *, prefix: str = "") -> SamplingParams:
    """Each sampling field the message declares: its value when set, else `defaults`, else SamplingParams'
    default; then checked against llmlab.sampling (errors name `prefix + field`)."""
    declared = msg.DESCRIPTOR.fields_by_name
    values: dict[str, Any] = {}
    for name in _SCALARS:
        if name in declared and declared[name].has_presence and msg.HasField(name):
            values[name] = getattr(msg, name)
        elif name in defaults:
            values[name] = defaults[name]
    stop = list(msg.stop) if "stop" in declared else []
    check_sampling({**values, "stop": stop}, prefix=prefix)
    if "logprobs" in declared:  # asking for alternatives asks for the chosen token's logprob too
        values["logprobs"] = bool(msg.logprobs) or ("top_logprobs" in declared and msg.HasField("top_logprobs"))
    return SamplingParams(**values, stop=stop)


def optional_field(msg: Message, name: str, default: Any = None) -> Any:
    """A proto3 `optional` field's value, or `default` when unset."""
    return getattr(msg, name) if msg.HasField(name) else default
