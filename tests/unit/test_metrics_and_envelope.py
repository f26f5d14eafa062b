"""Prometheus names and merging, HTTP route lookup from annotations, envelope helpers."""

from prometheus_client.parser import text_string_to_metric_families

from llmlab.experiments.v1 import experiments_service_pb2  # noqa: F401  (registers the descriptors)
from llmlab.runtime.envelope import pagination, seconds_text, value
from llmlab.runtime.httprules import http_route
from llmlab.runtime.metrics import ServiceMetrics, merge_expositions


def test_documented_metric_names_exist():
    m = ServiceMetrics("experiments")
    m.http_requests_total.labels("GET", "/api/experiments", "200").inc()
    m.http_request_duration_seconds.labels("GET", "/api/experiments").observe(0.02)
    text = m.render()
    for name in (
        "http_requests_total",
        "http_request_duration_seconds_bucket",
        "model_inference_seconds",
        "active_connections",
        "db_connections_active",
    ):
        assert name in text


def test_merge_adds_service_label_and_stays_valid():
    a, b = ServiceMetrics("auth"), ServiceMetrics("experiments")
    a.http_requests_total.labels("POST", "/auth/token", "200").inc(2)
    b.http_requests_total.labels("GET", "/api/experiments", "200").inc(3)
    merged = merge_expositions({"auth": a.render(), "experiments": b.render()})
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    samples = {(s.labels["service"], s.labels["path"]): s.value for s in families["http_requests"].samples
               if s.name == "http_requests_total"}
    assert samples == {("auth", "/auth/token"): 2.0, ("experiments", "/api/experiments"): 3.0}
    assert merged.count("# TYPE http_requests_total counter") == 1


def test_http_route_comes_from_annotations():
    assert http_route("/llmlab.experiments.v1.ExperimentService/GetExperiment") == ("GET", "/api/experiments/{id}")
    assert http_route("/llmlab.experiments.v1.ExperimentService/BulkExperiments") == ("POST", "/api/experiments/bulk")
    assert http_route("/grpc.health.v1.Health/Check") is None
    assert http_route("/no.such.Service/Method") is None


def test_envelope_helpers():
    p = pagination(page=1, limit=20, total=1247)
    assert (p.total_pages, p.has_next, p.has_previous) == (63, True, False)
    last = pagination(page=63, limit=20, total=1247)
    assert (last.has_next, last.has_previous) == (False, True)
    empty = pagination(page=1, limit=20, total=0)
    assert (empty.total_pages, empty.has_next) == (0, False)
    assert value(None).WhichOneof("kind") == "null_value"
    assert value(94.2).number_value == 94.2
    assert seconds_text(3200) == "3.2s" and seconds_text(45 * 60_000) == "45m" and seconds_text(65 * 60_000) == "1h5m"
