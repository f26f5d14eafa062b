"""Ops endpoints through Envoy: health, readiness, detailed health, /api/health, /metrics, /healthz."""

import re

from prometheus_client.parser import text_string_to_metric_families


async def test_gateway_healthz(http):
    r = await http.get("/healthz")
    assert r.status_code == 200


async def test_health_is_seed_004_shape(http):
    r = await http.get("/health")
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"status", "model_loaded", "memory_usage", "active_connections"}
    assert body["status"] == "healthy"
    assert body["model_loaded"] is True  # the engine holds the embedded model
    assert re.fullmatch(r"\d+\.\dGB/\d+\.\dGB", body["memory_usage"])
    assert isinstance(body["active_connections"], int) and body["active_connections"] >= 0


async def test_readiness_is_seed_001_shape(http):
    r = await http.get("/health/ready")
    assert r.status_code == 200
    assert r.json() == {
        "status": "healthy",
        "components": {"database": "healthy", "cache": "healthy", "storage": "healthy", "model": "healthy"},
    }


async def test_detailed_health_probes_every_service(http, platform):
    body = (await http.get("/health/detailed")).json()
    assert body["status"] == "healthy" and body["version"]
    assert set(body["dependencies"]) == {"postgres", "redis"}
    assert all(d["status"] == "healthy" and d["latency_ms"] >= 0 for d in body["dependencies"].values())
    assert set(body["services"]) == {"auth", "experiments", "inference", "metrics", "analytics", "files"}
    for name, svc in body["services"].items():
        assert svc["status"] == "healthy", name
        assert svc["target"].endswith(f":{platform.service_ports[name]}")
        assert svc["memory_rss_bytes"] > 0 and svc["uptime_seconds"] > 0
    assert body["services"]["experiments"]["db_connections_active"] >= 0


async def test_api_health_is_lab_envelope(http):
    r = await http.get("/api/health", headers={"x-request-id": "ignored-from-client"})
    body = r.json()
    assert body["success"] is True
    assert body["data"]["status"] == "healthy"
    assert body["data"]["services"] == {"database": "healthy", "llm_service": "healthy", "metrics_engine": "healthy"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["data"]["timestamp"])
    assert body["meta"]["request_id"] == r.headers["x-request-id"]


async def test_metrics_exposes_documented_names_and_counts_requests(http):
    await http.get("/api/experiments")
    await http.get("/api/experiments")
    r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("http_requests", "http_request_duration_seconds", "model_inference_seconds",
                 "active_connections", "db_connections_active"):
        assert name in families, name
    hits = [s for s in families["http_requests"].samples
            if s.name == "http_requests_total" and s.labels.get("path") == "/api/experiments"
            and s.labels.get("method") == "GET" and s.labels.get("status") == "200"]
    assert hits and hits[0].labels["service"] == "experiments" and hits[0].value >= 2
    up = {s.labels["service"]: s.value for s in families["llmlab_service_up"].samples}
    assert up == dict.fromkeys(("analytics", "auth", "experiments", "files", "inference", "metrics"), 1.0)


def _counter(text: str, family: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return sum(s.value for s in fam.samples
                       if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items()))
    return 0.0


async def test_ext_authz_and_ratelimit_are_asked_for_every_routed_request(http):
    limited = await http.post("/v1/auth/api-keys", json={"name": "ops", "permissions": ["experiments:read"],
                                                         "rate_limit": {"requests_per_minute": 100}})
    headers = {"authorization": f"Bearer {limited.json()['api_key']}"}
    before = (await http.get("/metrics")).text
    for _ in range(3):
        assert (await http.get("/api/experiments", headers=headers)).status_code == 200
    after = (await http.get("/metrics")).text
    # 3 API calls + the /metrics call itself each pass through ext_authz (/metrics is public).
    assert _counter(after, "authz_checks", decision="allow") - _counter(before, "authz_checks", decision="allow") >= 4
    assert _counter(after, "authz_checks", reason="public") - _counter(before, "authz_checks", reason="public") >= 1
    # Check admits principals that have limits in Redis (the admin's key has none).
    assert _counter(after, "ratelimit_checks", code="OK") - _counter(before, "ratelimit_checks", code="OK") >= 3
