"""Prometheus metrics of one service, on its own registry, with the documented names (docs/api.md "ops")."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServiceMetrics:
    """The metric families every service exports; the inference service also observes model_inference_seconds."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.http_requests_total = Counter(
            "http_requests_total",
            "Total number of HTTP requests",
            ["method", "path", "status"],
            registry=self.registry,
        )
        self.http_request_duration_seconds = Histogram(
            "http_request_duration_seconds",
            "HTTP request latency in seconds",
            ["method", "path"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_inference_seconds = Histogram(
            "model_inference_seconds",
            "Time spent generating with a model, in seconds",
            ["model", "backend"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.active_connections = Gauge(
            "active_connections", "Requests currently being served", registry=self.registry
        )
        self.db_connections_active = Gauge(
            "db_connections_active", "Current number of active database connections", registry=self.registry
        )

    @property
    def in_flight(self) -> int:
        """Requests being served now (the active_connections gauge)."""
        for metric in self.active_connections.collect():
            for sample in metric.samples:
                return int(sample.value)
        return 0

    def track_db_pool(self, in_use: Callable[[], int]) -> None:
        self.db_connections_active.set_function(in_use)

    def render(self) -> str:
        return generate_latest(self.registry).decode()


class _Merged:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def _public(sample: Sample) -> bool:
    # RPCs without a REST route are labelled with their gRPC method path (interceptors.py): internal names.
    return not sample.labels.get("path", "").startswith("/llmlab.")


def merge_expositions(texts: dict[str, str]) -> str:
    """Merge several services' Prometheus texts into one valid exposition, adding a `service` label.

    This is the public `/metrics`: samples of internal RPCs (no REST route) are left out; each service's own
    exposition (ServiceInfoService/ScrapeMetrics, for operators) keeps them.
    """
    families: dict[str, Metric] = {}
    for service, text in sorted(texts.items()):
        for fam in text_string_to_metric_families(text):
            merged = families.get(fam.name)
            if merged is None:
                merged = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                families[fam.name] = merged
            for s in filter(_public, fam.samples):
                merged.samples.append(
                    Sample(s.name, {"service": service, **s.labels}, s.value, s.timestamp, s.exemplar)
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(families.values()))  # type: ignore[arg-type]
    return generate_latest(registry).decode()
