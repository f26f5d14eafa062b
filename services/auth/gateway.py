"""Envoy's ext_authz (Authorization/Check) and rate-limit (RateLimitService/ShouldRateLimit) endpoints.

Until the auth issue lands every request is allowed and nothing is limited, but the wiring is real: Envoy calls
these RPCs for every routed request, and each decision is counted in Prometheus metrics.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from google.rpc import code_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter

PRINCIPAL_HEADER = "x-llmlab-principal"
ANONYMOUS = "anonymous"


class GatewayMetrics:
    """Counters of the decisions the gateway asked for."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.authz_checks = Counter(
            "authz_checks_total", "External authorization checks answered", ["decision"], registry=registry
        )
        self.ratelimit_checks = Counter(
            "ratelimit_checks_total", "Rate-limit checks answered", ["code"], registry=registry
        )


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Envoy external authorization: decides and stamps the trusted principal header."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> external_auth_pb2.CheckResponse:
        self._metrics.authz_checks.labels("allow").inc()
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=[
                    base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=PRINCIPAL_HEADER, value=ANONYMOUS),
                        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                    )
                ]
            ),
        )


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """Envoy rate-limit service: answers OK for every descriptor until limits are configured."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics

    async def ShouldRateLimit(
        self, request: rls_pb2.RateLimitRequest, context: Any
    ) -> rls_pb2.RateLimitResponse:
        self._metrics.ratelimit_checks.labels("OK").inc()
        return rls_pb2.RateLimitResponse(
            overall_code=rls_pb2.RateLimitResponse.OK,
            statuses=[
                rls_pb2.RateLimitResponse.DescriptorStatus(code=rls_pb2.RateLimitResponse.OK)
                for _ in request.descriptors
            ],
        )
