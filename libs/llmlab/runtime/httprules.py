"""The one reader of the google.api.http annotations: every REST binding (verb, path, body) of every RPC.

Gateway rendering (gateway/render.py), auth route permissions (services/auth/routes.py), metrics labels (the
interceptor's ``http_route``) and the OpenAPI document (llmlab.openapi) all read the annotations through here, so
the verbs, ``additional_bindings``, ``custom`` patterns, ``body`` and ``response_body`` mean one thing everywhere.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool

# The HttpRule pattern fields that name an HTTP method themselves; `custom` carries its own (`kind`).
VERBS = ("get", "put", "post", "delete", "patch")

# RPCs any client may call without a credential (README "First admin and API keys"): the auth service lets them
# through and the OpenAPI document gives them no security requirement. Signed upload/download URLs are authorised
# by their signature instead; the API reference is as public as /health.
PUBLIC_RPCS = frozenset({
    "/llmlab.analytics.v1.OpsService/GetHealth",
    "/llmlab.analytics.v1.OpsService/GetReadiness",
    "/llmlab.analytics.v1.OpsService/GetMetrics",
    "/llmlab.analytics.v1.OpsService/GetOpenApiDocument",
    "/llmlab.analytics.v1.OpsService/GetApiReference",
    "/llmlab.analytics.v1.OpsService/GetApiReferenceAsset",
    "/llmlab.auth.v1.AuthService/CreateToken",
    "/llmlab.auth.v1.AuthService/RefreshToken",
    "/llmlab.files.v1.TransferService/PutSignedUpload",
    "/llmlab.files.v1.TransferService/GetSignedDownload",
})


# RPCs that answer 201 Created (docs/research.md "Errors"): gRPC has no such status, so the servicer sends
# CREATED_METADATA as initial metadata and gateway/errors.lua turns it into the HTTP status; the OpenAPI document
# documents 201 for them.
CREATED_RPCS = frozenset({
    "/llmlab.experiments.v1.ResearchExperimentService/CreateResearchExperiment",
    "/llmlab.experiments.v1.ResearchExperimentService/CreateExperimentRun",
    "/llmlab.experiments.v1.PromptService/CreatePrompt",
    "/llmlab.metrics.v1.EvaluationService/CreateEvaluation",
})
CREATED_METADATA = (("x-llmlab-http-status", "201"),)

# The API family of a request path, first match wins; anything else is the research family. A prefix ending in
# "/" also matches the path without it ("/api/v1"). gateway/errors.lua's family_of says the same in Lua (the
# Lua filter cannot import this), and render.py hands this table to Envoy for its own early replies.
FAMILY_PREFIXES = (("/api/v1/", "native"), ("/api/", "lab"), ("/v1/", "serving"), ("/health", "ops"),
                   ("/metrics/", "ops"))


def family(path: str) -> str:
    """"lab", "research", "serving", "native" or "ops" for a request path (query string ignored)."""
    path = path.split("?", 1)[0]
    for prefix, name in FAMILY_PREFIXES:
        if path.startswith(prefix) or (prefix.endswith("/") and path == prefix[:-1]):
            return name
    return "research"


@dataclass(frozen=True)
class Binding:
    """One REST binding of an RPC: the rule itself or one of its additional_bindings."""

    verb: str  # upper case: "GET", ... or a custom kind
    template: str  # "/api/experiments/{id}"
    body: str  # "" (no body), "*" (the whole request) or a request field name
    response_body: str  # "" (the whole response) or a response field name
    service: str  # "llmlab.experiments.v1.ExperimentService"
    method: str  # "GetExperiment"
    primary: bool  # False for additional_bindings

    @property
    def rpc(self) -> str:
        """The gRPC method path: "/llmlab.experiments.v1.ExperimentService/GetExperiment"."""
        return f"/{self.service}/{self.method}"


def _rule_bindings(rule: http_pb2.HttpRule, service: str, method: str) -> Iterator[Binding]:
    for i, r in enumerate([rule, *rule.additional_bindings]):
        pattern = r.WhichOneof("pattern")
        if pattern in VERBS:
            verb, template = pattern.upper(), getattr(r, pattern)
        elif pattern == "custom":
            verb, template = r.custom.kind.upper(), r.custom.path
        else:
            continue
        yield Binding(verb, template, r.body, r.response_body, service, method, i == 0)


def _rule(options: descriptor_pb2.MethodOptions) -> http_pb2.HttpRule | None:
    # Re-parse: options read from a descriptor set parsed before annotations_pb2 was imported keep the extension
    # as unknown fields.
    opts = descriptor_pb2.MethodOptions.FromString(options.SerializeToString())
    return opts.Extensions[annotations_pb2.http] if opts.HasExtension(annotations_pb2.http) else None


def method_bindings(service: str, method: descriptor_pb2.MethodDescriptorProto) -> list[Binding]:
    """The bindings of one method of a descriptor set (``service`` is the service's full name)."""
    rule = _rule(method.options)
    return list(_rule_bindings(rule, service, method.name)) if rule is not None else []


def descriptor_bindings(method: descriptor.MethodDescriptor) -> list[Binding]:
    """The bindings of one method of the generated (imported) stubs."""
    opts = method.GetOptions()
    if not opts.HasExtension(annotations_pb2.http):
        return []
    return list(_rule_bindings(opts.Extensions[annotations_pb2.http], method.containing_service.full_name, method.name))


def file_set_bindings(files: Iterable[descriptor_pb2.FileDescriptorProto]) -> list[Binding]:
    """Every binding of every method of the given files, in descriptor order."""
    return [
        b for f in files for svc in f.service for m in svc.method for b in method_bindings(f"{f.package}.{svc.name}", m)
    ]


@functools.lru_cache(maxsize=4096)
def http_route(full_method: str) -> tuple[str, str] | None:
    """("GET", "/api/experiments/{id}") for "/llmlab.experiments.v1.ExperimentService/GetExperiment" (its primary
    binding), or None for RPCs that have no REST mapping (internal RPCs, health, reflection)."""
    try:
        service_name, method_name = full_method.lstrip("/").split("/", 1)
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except (KeyError, ValueError):
        return None
    method = service.methods_by_name.get(method_name)
    bindings = descriptor_bindings(method) if method is not None else []
    return (bindings[0].verb, bindings[0].template) if bindings else None
