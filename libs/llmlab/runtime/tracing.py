"""OpenTelemetry tracing: one provider per service, OTLP export when configured, W3C trace context over gRPC."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from .settings import VERSION

_PROPAGATOR = TraceContextTextMapPropagator()

# Every custom span attribute lives under this prefix (opentelemetry-demo convention).
ATTR_PREFIX = "llmlab."


class _MetadataGetter(Getter[Mapping[str, str]]):
    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        return [value] if value is not None else None

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


class _MetadataSetter(Setter[MutableMapping[str, str]]):
    def set(self, carrier: MutableMapping[str, str], key: str, value: str) -> None:
        carrier[key] = value


def make_tracer_provider(service: str, otlp_endpoint: str = "") -> TracerProvider:
    """A provider for this service; spans are exported over OTLP/gRPC only when an endpoint is configured."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"llmlab-{service}", "service.version": VERSION})
    )
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_endpoint, insecure=True)))
    return provider


def tracer_for(provider: TracerProvider, name: str) -> Tracer:
    return provider.get_tracer(name, VERSION)


def extract(metadata: Mapping[str, str]) -> otel_context.Context:
    """Trace context from incoming gRPC metadata (traceparent/tracestate set by Envoy or a peer)."""
    return _PROPAGATOR.extract(metadata, getter=_MetadataGetter())


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current trace context into outgoing metadata."""
    _PROPAGATOR.inject(carrier, setter=_MetadataSetter())
