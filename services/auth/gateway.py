"""Envoy's ext_authz (Authorization/Check) and rate-limit (RateLimitService/ShouldRateLimit) endpoints.

Check resolves the credential and the route's permission and stamps the trusted principal headers (the listener
drops client-sent x-llmlab-* headers, so only this answer can set them). ShouldRateLimit reads them back from the
descriptor (`principal`, `limits`), admits or refuses atomically in Redis, and returns the X-RateLimit-* headers and,
when refused, a google.rpc.Status body that the gateway's Lua filter renders in the caller's API family.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from prometheus_client import CollectorRegistry, Counter

from llmlab.runtime import DomainError, PermissionDenied, ResourceExhausted
from llmlab.runtime.context import PERMISSIONS_HEADER, PRINCIPAL_HEADER, Principal

from .domain import Auth, CredentialRejected
from .limits import Limits
from .ratelimit import Decision, WindowState

LIMITS_HEADER = "x-llmlab-limits"
GATEWAY_NAMESPACE = "llmlab.gateway"  # dynamic metadata of the gateway's Lua filter (family)
# Credentials stop at the gateway: services get the principal headers instead.
CREDENTIAL_HEADERS = ("authorization", "x-api-key")
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_UNITS = {"burst": "second", "requests_per_minute": "minute", "requests_per_hour": "hour",
          "tokens_per_minute": "minute", "tokens_per_month": "month"}


class GatewayMetrics:
    """Counters of the decisions the gateway asked for."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.authz_checks = Counter(
            "authz_checks", "External authorization checks answered", ["decision", "reason"], registry=registry
        )
        self.ratelimit_checks = Counter(
            "ratelimit_checks", "Rate-limit checks answered", ["code"], registry=registry
        )


def status_json(exc: DomainError) -> str:
    """The google.rpc.Status JSON that convert_grpc_status would write, for the Lua filter to reshape."""
    return json_format.MessageToJson(exc.to_status(), preserving_proto_field_name=True, indent=None)


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE)


def _family(request: external_auth_pb2.CheckRequest) -> str:
    fields = request.attributes.metadata_context.filter_metadata[GATEWAY_NAMESPACE].fields
    return fields["family"].string_value if "family" in fields else ""


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):
    """Envoy external authorization: 401/403 in the family's shape, or OK with the trusted principal headers."""

    def __init__(self, auth: Auth, metrics: GatewayMetrics) -> None:
        self._auth = auth
        self._metrics = metrics

    async def Check(self, request: external_auth_pb2.CheckRequest, context: Any) -> external_auth_pb2.CheckResponse:
        http = request.attributes.request.http
        try:
            verdict = await self._auth.authorize(
                http.method, http.path, http.headers.get("authorization", ""), http.headers.get("x-api-key", "")
            )
        except CredentialRejected as exc:
            self._metrics.authz_checks.labels("deny", exc.why).inc()
            return self._denied(http_status_pb2.Unauthorized, exc, code_pb2.UNAUTHENTICATED,
                                [_header("www-authenticate", 'Bearer realm="llmlab"')])
        except PermissionDenied as exc:
            self._metrics.authz_checks.labels("deny", "forbidden").inc()
            if _family(request) == "serving":  # OpenAI's error object has no field for it: say it in the message
                exc = PermissionDenied(f"{exc.message}: the credential lacks the "
                                       f"'{exc.metadata['required_permission']}' permission", metadata=exc.metadata)
            return self._denied(http_status_pb2.Forbidden, exc, code_pb2.PERMISSION_DENIED, [])
        headers = []
        if verdict.identity is None:
            self._metrics.authz_checks.labels("allow", "public").inc()
        else:
            self._metrics.authz_checks.labels("allow", "credential").inc()
            principal = verdict.identity.principal
            headers = [_header(PRINCIPAL_HEADER, principal.header()),
                       _header(PERMISSIONS_HEADER, principal.permissions_header())]
            limits = verdict.identity.limits.header()
            if limits:
                headers.append(_header(LIMITS_HEADER, limits))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK),
            ok_response=external_auth_pb2.OkHttpResponse(headers=headers, headers_to_remove=CREDENTIAL_HEADERS),
        )

    @staticmethod
    def _denied(status: int, exc: DomainError, code: int,
                headers: list[base_pb2.HeaderValueOption]) -> external_auth_pb2.CheckResponse:
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=status),
                headers=[_header("content-type", "application/json"), *headers],
                body=status_json(exc),
            ),
        )


def _tightest(states: list[WindowState]) -> WindowState | None:
    """The window closest to refusing (fewest remaining; the later reset on a tie)."""
    return min(states, key=lambda s: (s.remaining, -s.reset_at_ms), default=None)


def _epoch(ms: int) -> str:
    return str(math.ceil(ms / 1000))


def rate_limit_headers(decision: Decision, serving: bool) -> list[tuple[str, str]]:
    """X-RateLimit-Limit/-Remaining/-Reset for the binding request window, and on /v1 the -Requests (per-minute
    requests) and -Tokens (per-minute tokens) variants. Resets are epoch seconds (docs/auth.md)."""
    requests = [s for s in decision.states if not s.window.tokens]
    primary = decision.refused or _tightest(requests) or _tightest(decision.states)
    out: list[tuple[str, str]] = []
    if primary is not None:
        out += [("x-ratelimit-limit", str(primary.window.limit)), ("x-ratelimit-remaining", str(primary.remaining)),
                ("x-ratelimit-reset", _epoch(primary.reset_at_ms))]
    if serving:
        for suffix, name in (("requests", "requests_per_minute"), ("tokens", "tokens_per_minute")):
            s = _tightest([s for s in decision.states if s.window.name == name])
            if s is not None:
                out += [(f"x-ratelimit-limit-{suffix}", str(s.window.limit)),
                        (f"x-ratelimit-remaining-{suffix}", str(s.remaining)),
                        (f"x-ratelimit-reset-{suffix}", _epoch(s.reset_at_ms))]
    if decision.refused is not None:
        out.append(("retry-after", str(retry_after(decision))))
    return out


def retry_after(decision: Decision) -> int:
    assert decision.refused is not None
    return max(1, math.ceil((decision.refused.reset_at_ms - decision.now_ms) / 1000))


def refusal(decision: Decision) -> ResourceExhausted:
    """The 429 of a refused request: quota_exceeded_error once the month's tokens are spent, else a
    rate_limit_error; retry_after, limit, remaining, reset_at in every family (docs/auth.md)."""
    s = decision.refused
    assert s is not None
    wait = retry_after(decision)
    reset_at = dt.datetime.fromtimestamp(math.ceil(s.reset_at_ms / 1000), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    who = "API key" if s.window.scope == "key" else "account"
    meta = {"retry_after": wait, "limit": s.window.limit, "remaining": s.remaining, "reset_at": reset_at}
    if s.window.name == "tokens_per_month":
        return ResourceExhausted(
            f"You exceeded the monthly quota of {s.window.limit} tokens for this {who}; it resets at {reset_at}.",
            reason="QUOTA_EXCEEDED", metadata={"type": "quota_exceeded_error", **meta},
        )
    what = "tokens" if s.window.tokens else "requests"
    return ResourceExhausted(
        f"Rate limit exceeded: {s.window.limit} {what} per {_UNITS[s.window.name]} for this {who}. "
        f"Please retry after {wait} seconds.",
        metadata={"type": "rate_limit_error", **meta},
    )


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """Envoy rate-limit service over the principal's windows in Redis."""

    def __init__(self, auth: Auth, metrics: GatewayMetrics) -> None:
        self._auth = auth
        self._metrics = metrics

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Any) -> rls_pb2.RateLimitResponse:
        entries = {e.key: e.value for d in request.descriptors for e in d.entries}
        principal = Principal.parse(entries.get("principal", ""))
        limits = Limits.parse(entries.get("limits", ""))
        ok = rls_pb2.RateLimitResponse.OK
        if principal is None or not limits.header():
            self._metrics.ratelimit_checks.labels("OK").inc()
            return rls_pb2.RateLimitResponse(
                overall_code=ok, statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(code=ok)
                                           for _ in request.descriptors])
        decision = await self._auth.limiter.admit(principal, limits, int(time.time() * 1000))
        code = ok if decision.allowed else rls_pb2.RateLimitResponse.OVER_LIMIT
        self._metrics.ratelimit_checks.labels(rls_pb2.RateLimitResponse.Code.Name(code)).inc()
        response = rls_pb2.RateLimitResponse(
            overall_code=code,
            statuses=[rls_pb2.RateLimitResponse.DescriptorStatus(code=code) for _ in request.descriptors],
            response_headers_to_add=[base_pb2.HeaderValue(key=k, value=v) for k, v in
                                     rate_limit_headers(decision, entries.get("family") == "serving")],
        )
        if not decision.allowed:
            response.raw_body = status_json(refusal(decision)).encode()
        return response
