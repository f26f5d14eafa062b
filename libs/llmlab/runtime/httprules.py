"""The REST route (verb, path template) of each RPC, read from the google.api.http annotations at run time."""

from __future__ import annotations

import functools

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pool

_VERBS = ("get", "put", "post", "delete", "patch")


def _rule_route(rule: http_pb2.HttpRule) -> tuple[str, str] | None:
    pattern = rule.WhichOneof("pattern")
    if pattern in _VERBS:
        return pattern.upper(), getattr(rule, pattern)
    if pattern == "custom":
        return rule.custom.kind.upper(), rule.custom.path
    return None


@functools.lru_cache(maxsize=4096)
def http_route(full_method: str) -> tuple[str, str] | None:
    """("GET", "/api/experiments/{id}") for "/llmlab.experiments.v1.ExperimentService/GetExperiment", or None
    for RPCs that have no REST mapping (internal RPCs, health, reflection)."""
    try:
        service_name, method_name = full_method.lstrip("/").split("/", 1)
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except (KeyError, ValueError):
        return None
    method = service.methods_by_name.get(method_name)
    if method is None or not method.GetOptions().HasExtension(annotations_pb2.http):
        return None
    return _rule_route(method.GetOptions().Extensions[annotations_pb2.http])
