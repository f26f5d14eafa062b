"""Which permission each route needs: the REST path (or gRPC method path) → its RPC → a permission.

The REST surface is read from the google.api.http annotations of the generated llmlab packages through
llmlab.runtime.httprules, the reader the gateway's rendering uses too, so a new annotated RPC is covered without a
second route list. Permissions are given per service (one for reads — GET — and one for writes) with per-method
exceptions; an RPC of a service missing from the table needs `admin`, and a unit test fails until the table names it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import re
from dataclasses import dataclass
from types import ModuleType

from llmlab.runtime.context import ADMIN
from llmlab.runtime.httprules import PUBLIC_RPCS, descriptor_bindings
from llmlab.runtime.settings import SERVICES

INFERENCE = "inference"
MODELS_READ = "models.read"
MODELS_WRITE = "models.write"
EXPERIMENTS_READ = "experiments:read"
EXPERIMENTS_WRITE = "experiments:write"
FILES = "files"
USAGE = "usage"
KEYS = "keys"
# The vocabulary (docs/auth.md).
PERMISSIONS = (ADMIN, INFERENCE, MODELS_READ, MODELS_WRITE, EXPERIMENTS_READ, EXPERIMENTS_WRITE, FILES, USAGE, KEYS)

EXP = (EXPERIMENTS_READ, EXPERIMENTS_WRITE)
MODELS = (MODELS_READ, MODELS_WRITE)
# Service -> (permission for GET routes, permission for the other verbs).
SERVICE_PERMISSIONS: dict[str, tuple[str, str]] = {
    "llmlab.experiments.v1.ExperimentService": EXP,
    "llmlab.experiments.v1.ResearchExperimentService": EXP,
    "llmlab.experiments.v1.BatchExperimentService": EXP,
    "llmlab.experiments.v1.ResponseService": EXP,
    "llmlab.experiments.v1.PromptService": EXP,
    "llmlab.metrics.v1.MetricsService": EXP,
    "llmlab.metrics.v1.EvaluationService": EXP,
    "llmlab.analytics.v1.AnalyticsService": EXP,
    "llmlab.inference.v1.ModelService": MODELS,
    "llmlab.inference.v1.NativeService": (MODELS_READ, INFERENCE),
    "llmlab.inference.v1.OpenAIService": (MODELS_READ, INFERENCE),
    "llmlab.inference.v1.BatchService": (INFERENCE, INFERENCE),
    "llmlab.inference.v1.TrainingService": MODELS,
    "llmlab.inference.v1.FineTuningService": MODELS,
    "llmlab.files.v1.FileService": (FILES, FILES),
    "llmlab.files.v1.DatasetService": (FILES, FILES),
    "llmlab.files.v1.ExportService": (FILES, FILES),
    "llmlab.analytics.v1.UsageService": (USAGE, USAGE),
    "llmlab.analytics.v1.WebhookService": (USAGE, USAGE),
    "llmlab.auth.v1.AuthService": (KEYS, KEYS),
}
# Exceptions: POSTs that only read, generation outside the OpenAI/native families, model loading.
METHOD_PERMISSIONS: dict[str, str] = {
    "/llmlab.experiments.v1.PromptService/RenderPrompt": EXPERIMENTS_READ,
    "/llmlab.experiments.v1.ResponseService/CompareResponses": EXPERIMENTS_READ,
    "/llmlab.experiments.v1.ResponseService/AnalyzeComparison": EXPERIMENTS_READ,
    "/llmlab.metrics.v1.MetricsService/CompareMetrics": EXPERIMENTS_READ,
    "/llmlab.inference.v1.ModelService/GenerateLabText": INFERENCE,
    "/llmlab.inference.v1.NativeService/NativeLoadModel": MODELS_WRITE,
    "/llmlab.metrics.v1.EvaluationService/EvaluateModel": INFERENCE,
}
# PUBLIC_RPCS (no credential needed) lives in llmlab.runtime.httprules: the OpenAPI document reads it too.
PUBLIC_PATHS = frozenset({"/healthz"})  # Envoy's own health check (answered before ext_authz anyway)
# Any valid credential, no particular permission (README: /health/detailed needs a credential).
AUTHENTICATED_RPCS = frozenset({
    "/llmlab.analytics.v1.OpsService/GetDetailedHealth",
    "/llmlab.analytics.v1.OpsService/GetApiHealth",
})


@dataclass(frozen=True)
class Route:
    """One REST binding of an RPC and what calling it needs."""

    verb: str
    template: str
    rpc: str  # "/llmlab.<svc>.v1.<Service>/<Method>"
    public: bool
    permission: str | None  # None: any valid credential (or none at all when public)


def permission_for(rpc: str, verb: str) -> str | None:
    """The permission an RPC needs when called with `verb` (its http rule's verb)."""
    if rpc in PUBLIC_RPCS or rpc in AUTHENTICATED_RPCS:
        return None
    if rpc in METHOD_PERMISSIONS:
        return METHOD_PERMISSIONS[rpc]
    service = rpc.lstrip("/").split("/", 1)[0]
    read, write = SERVICE_PERMISSIONS.get(service, (ADMIN, ADMIN))
    return read if verb == "GET" else write


def _regex(template: str) -> re.Pattern[str]:
    """`/v1/models/{id=**}` -> a regex over the path: `{x}` is one segment, `{x=**}` the rest."""
    out = []
    for part in re.split(r"(\{[^}]*\})", template):
        if part.startswith("{"):
            out.append(".+" if part[1:-1].partition("=")[2] == "**" else "[^/]+")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out) + "/?$")


def _literal_segments(template: str) -> int:
    return sum(1 for seg in template.strip("/").split("/") if seg and "{" not in seg)


def _pb2_modules() -> list[ModuleType]:
    modules = []
    for svc in SERVICES:
        package = importlib.import_module(f"llmlab.{svc}.v1")
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
            if info.name.endswith("_pb2"):
                modules.append(importlib.import_module(f"llmlab.{svc}.v1.{info.name}"))
    return modules


def load_routes() -> list[Route]:
    """Every http binding of every llmlab service, read from the generated packages' descriptors."""
    routes: list[Route] = []
    for module in _pb2_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                for b in descriptor_bindings(method):
                    routes.append(Route(b.verb, b.template, b.rpc, b.rpc in PUBLIC_RPCS, permission_for(b.rpc, b.verb)))
    return routes


class RouteTable:
    """Resolves (verb, path) as Envoy does: the first match among templates ordered by literal segments."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._by_verb: dict[str, list[tuple[re.Pattern[str], Route]]] = {}
        ordered = sorted(routes, key=lambda r: (-_literal_segments(r.template), "**" in r.template))
        for r in ordered:
            self._by_verb.setdefault(r.verb, []).append((_regex(r.template), r))
        self._by_rpc: dict[str, Route] = {}
        for r in routes:
            self._by_rpc.setdefault(r.rpc, r)
        self.resolve = functools.lru_cache(maxsize=8192)(self._resolve)

    def _resolve(self, verb: str, path: str) -> Route | None:
        path = path.split("?", 1)[0]
        if path.startswith("/llmlab."):  # a gRPC client through the gateway: the path is the method
            return self._by_rpc.get(path)
        for pattern, route in self._by_verb.get("GET" if verb == "HEAD" else verb, ()):
            if pattern.match(path):
                return route
        return None
