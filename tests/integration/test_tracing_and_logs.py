"""W3C trace context crosses gRPC hops; logs carry request_id and trace_id; secrets never reach a log line."""

import json

import grpc
import structlog
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc
from llmlab.runtime.context import request_id_var
from llmlab.runtime.interceptors import PropagatingClientInterceptor
from llmlab.runtime.logs import configure_logging
from llmlab.runtime.tracing import make_tracer_provider


async def test_trace_context_and_request_id_propagate(experiments_app):
    exporter = InMemorySpanExporter()
    experiments_app.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    caller = make_tracer_provider("caller")
    caller.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = caller.get_tracer("test")
    token = request_id_var.set("req_propagated")
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{experiments_app.port}", interceptors=[PropagatingClientInterceptor()]
        ) as channel:
            with tracer.start_as_current_span("caller-op") as parent:
                reply = await pb_grpc.ExperimentServiceStub(channel).ListExperiments(pb.ListExperimentsRequest())
    finally:
        request_id_var.reset(token)
    assert reply.meta.request_id == "req_propagated"
    server = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server) == 1
    span = server[0]
    assert span.name == "llmlab.experiments.v1.ExperimentService/ListExperiments"
    assert span.context.trace_id == parent.get_span_context().trace_id
    assert span.parent.span_id == parent.get_span_context().span_id
    assert span.attributes["http.route"] == "/api/experiments"
    assert span.attributes["llmlab.request_id"] == "req_propagated"


async def test_health_probes_are_not_traced(experiments_app):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    exporter = InMemorySpanExporter()
    experiments_app.tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{experiments_app.port}") as channel:
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert exporter.get_finished_spans() == ()


def test_json_logs_carry_context_and_redact_secrets(capsys):
    log = configure_logging("experiments", "info", "json")
    token = request_id_var.set("req_log")
    tracer = make_tracer_provider("logs").get_tracer("t")
    try:
        with tracer.start_as_current_span("op") as span:
            log.info("login attempt", username="ada", password="hunter2", api_key="sk-secret",
                     headers={"authorization": "Bearer abc", "accept": "json"})
    finally:
        request_id_var.reset(token)
        structlog.reset_defaults()
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line["event"] == "login attempt" and line["service"] == "experiments" and line["level"] == "info"
    assert line["request_id"] == "req_log"
    assert line["trace_id"] == format(span.get_span_context().trace_id, "032x")
    assert line["password"] == "[redacted]" and line["api_key"] == "[redacted]"
    assert line["headers"] == {"authorization": "[redacted]", "accept": "json"}
    assert "hunter2" not in json.dumps(line) and "sk-secret" not in json.dumps(line)
