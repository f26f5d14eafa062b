"""The route table: every REST binding resolves as Envoy resolves it, and every service has permissions."""

import pytest

from services.auth.routes import (
    AUTHENTICATED_RPCS,
    METHOD_PERMISSIONS,
    PERMISSIONS,
    PUBLIC_RPCS,
    SERVICE_PERMISSIONS,
    RouteTable,
    load_routes,
)

ROUTES = load_routes()
TABLE = RouteTable(ROUTES)


def test_every_transcoded_service_is_in_the_permission_table():
    services = {r.rpc.lstrip("/").split("/")[0] for r in ROUTES if r.rpc not in PUBLIC_RPCS | AUTHENTICATED_RPCS}
    missing = services - set(SERVICE_PERMISSIONS)
    assert not missing, f"add these services to SERVICE_PERMISSIONS: {sorted(missing)}"
    named = {p for pair in SERVICE_PERMISSIONS.values() for p in pair} | set(METHOD_PERMISSIONS.values())
    assert named <= set(PERMISSIONS)
    assert {*PUBLIC_RPCS, *AUTHENTICATED_RPCS, *METHOD_PERMISSIONS} <= {r.rpc for r in ROUTES}


@pytest.mark.parametrize(
    ("verb", "path", "rpc", "permission"),
    [
        ("GET", "/api/experiments/history", "ExperimentService/GetExperimentHistory", "experiments:read"),
        ("GET", "/api/experiments/12?x=1", "ExperimentService/GetExperiment", "experiments:read"),
        ("PUT", "/api/experiments/12", "ExperimentService/UpdateExperiment", "experiments:write"),
        ("GET", "/api/responses/single/5", "ResponseService/GetResponse", "experiments:read"),
        ("GET", "/api/responses/5", "ResponseService/ListResponses", "experiments:read"),
        ("POST", "/api/responses/compare", "ResponseService/CompareResponses", "experiments:read"),
        ("GET", "/v1/models/org/model-name", "OpenAIService/GetOpenAIModel", "models.read"),
        ("POST", "/v1/chat/completions", "OpenAIService/CreateChatCompletion", "inference"),
        ("POST", "/api/models/m/generate", "ModelService/GenerateLabText", "inference"),
        ("POST", "/api/v1/models/m/load", "NativeService/NativeLoadModel", "models.write"),
        ("POST", "/v1/fine_tuning/jobs", "FineTuningService/CreateFineTuningJob", "models.write"),
        ("DELETE", "/v1/auth/api-keys/key_1", "AuthService/DeleteApiKey", "keys"),
        ("GET", "/v1/usage/billing", "UsageService/GetBilling", "usage"),
        ("HEAD", "/api/experiments", "ExperimentService/ListExperiments", "experiments:read"),
        ("POST", "/llmlab.experiments.v1.ExperimentService/CreateExperiment", "ExperimentService/CreateExperiment",
         "experiments:write"),
    ],
)
def test_resolution(verb, path, rpc, permission):
    route = TABLE.resolve(verb, path)
    assert route is not None and route.rpc.endswith("." + rpc) and route.permission == permission
    assert not route.public


@pytest.mark.parametrize(
    ("verb", "path"),
    [("GET", "/health"), ("GET", "/health/ready"), ("GET", "/metrics"), ("POST", "/auth/token"),
     ("POST", "/auth/refresh"), ("PUT", "/uploads/tok"), ("GET", "/downloads/tok/file.csv")],
)
def test_public_routes(verb, path):
    route = TABLE.resolve(verb, path)
    assert route is not None and route.public and route.permission is None


def test_authenticated_only_and_unknown():
    assert TABLE.resolve("GET", "/health/detailed").permission is None
    assert not TABLE.resolve("GET", "/health/detailed").public
    assert TABLE.resolve("GET", "/no/such/path") is None
    assert TABLE.resolve("DELETE", "/health") is None
    assert TABLE.resolve("POST", "/llmlab.auth.v1.AuthService/RecordUsage") is None  # internal: not routed
