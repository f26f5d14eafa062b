"""Wiring of the auth service: Envoy's authorization and rate-limit protocols plus llmlab's AuthService."""

from __future__ import annotations

import pathlib

from envoy.service.auth.v3 import external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2_grpc

from llmlab.runtime import ServiceApp, ServiceSpec

from .gateway import AuthorizationServicer, GatewayMetrics, RateLimitServicer


async def setup(app: ServiceApp) -> None:
    metrics = GatewayMetrics(app.metrics.registry)
    app.add_servicer(
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
        AuthorizationServicer(metrics),
        "envoy.service.auth.v3.Authorization",
    )
    app.add_servicer(
        rls_pb2_grpc.add_RateLimitServiceServicer_to_server,
        RateLimitServicer(metrics),
        "envoy.service.ratelimit.v3.RateLimitService",
    )
    app.serve_package("llmlab.auth.v1", {})


SPEC = ServiceSpec(name="auth", setup=setup, migrations=pathlib.Path(__file__).parent / "migrations")
