"""gRPC interceptors: request id, tracing, structured logs, metrics and the one domain-error -> status mapping."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import structlog
from google.rpc import code_pb2, error_details_pb2, status_pb2
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from . import intake, tracing
from .context import (
    PERMISSIONS_HEADER,
    PRINCIPAL_HEADER,
    new_request_id,
    permissions_var,
    principal_var,
    request_id_var,
)
from .errors import DOMAIN, HTTP_STATUS, INTERNAL_MESSAGE, DomainError, Unimplemented
from .httprules import http_route
from .metrics import ServiceMetrics

log = structlog.get_logger(__name__)

# Health, reflection and service-info probes stay out of traces, logs and request metrics (they would drown
# the real traffic, and a probe must not count itself as an active request). So does the gateway's per-request
# ext_authz callout: Envoy's access log and the auth service's own counters record it, and the span, log line and
# metrics would double what every request costs.
_UNOBSERVED = ("/grpc.health.v1.", "/grpc.reflection.", "/llmlab.common.v1.ServiceInfoService/",
               "/envoy.service.auth.v3.Authorization/")


def _internal_trailers() -> tuple[tuple[str, bytes], ...]:
    st = status_pb2.Status(code=code_pb2.INTERNAL, message=INTERNAL_MESSAGE)
    st.details.add().Pack(error_details_pb2.ErrorInfo(reason="INTERNAL_ERROR", domain=DOMAIN))
    return (("grpc-status-details-bin", st.SerializeToString()),)


class _Call:
    """Mutable outcome of one RPC, filled in by the error mapping."""

    def __init__(self) -> None:
        self.http_status = 200
        self.grpc_code = grpc.StatusCode.OK


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every RPC handler of a service with the cross-cutting behaviour every service shares."""

    def __init__(self, service: str, tracer: trace.Tracer, metrics: ServiceMetrics) -> None:
        self._service = service
        self._tracer = tracer
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_UNOBSERVED):
            return handler
        deserializer = handler.request_deserializer
        if handler.unary_unary or handler.unary_stream:
            # Bad bytes (invalid UTF-8) become a 400 in _observe instead of gRPC's own opaque failure.
            deserializer = intake.tolerant(deserializer)
        kwargs = {
            "request_deserializer": deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, method), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(self._streaming(handler.unary_stream, method), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(handler.stream_unary, method), **kwargs)
        return grpc.stream_stream_rpc_method_handler(self._streaming(handler.stream_stream, method), **kwargs)

    def _unary(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with self._observe(method, context):
                intake.check(request)
                result = behavior(request, context)
                if inspect.isawaitable(result):
                    result = await result
                return result

        return wrapper

    def _streaming(self, behavior: Callable[..., Any], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with self._observe(method, context):
                intake.check(request)
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for item in result:
                        yield item
                elif inspect.isawaitable(result):
                    await result

        return wrapper

    @contextlib.asynccontextmanager
    async def _observe(self, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[_Call]:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        rid_token = request_id_var.set(metadata.get("x-request-id") or new_request_id())
        principal_token = principal_var.set(metadata.get(PRINCIPAL_HEADER, ""))
        permissions_token = permissions_var.set(metadata.get(PERMISSIONS_HEADER, ""))
        route = http_route(method)
        verb, path = route if route else ("GRPC", method)
        rpc_service, _, rpc_method = method.lstrip("/").partition("/")
        call = _Call()
        started = time.perf_counter()
        self._metrics.active_connections.inc()
        with self._tracer.start_as_current_span(
            method.lstrip("/"),
            context=tracing.extract(metadata),
            kind=SpanKind.SERVER,
            attributes={
                "rpc.system": "grpc",
                "rpc.service": rpc_service,
                "rpc.method": rpc_method,
                "http.route": path,
                f"{tracing.ATTR_PREFIX}request_id": request_id_var.get(),
            },
        ) as span:
            try:
                yield call
            except DomainError as exc:
                await self._abort(context, call, span, exc)
            except NotImplementedError:
                # Generated base servicers raise this for RPCs whose issue has not landed yet.
                await self._abort(
                    context, call, span, Unimplemented(f"{rpc_method} is not implemented yet")
                )
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                call.grpc_code, call.http_status = code, HTTP_STATUS.get(code, 500)
                raise
            except asyncio.CancelledError:
                call.grpc_code, call.http_status = grpc.StatusCode.CANCELLED, 499
                raise
            except Exception as exc:
                call.grpc_code, call.http_status = grpc.StatusCode.INTERNAL, 500
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                log.exception("unhandled error", rpc=method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE, trailing_metadata=_internal_trailers()
                )
            finally:
                elapsed = time.perf_counter() - started
                self._metrics.active_connections.dec()
                self._metrics.http_requests_total.labels(verb, path, str(call.http_status)).inc()
                self._metrics.http_request_duration_seconds.labels(verb, path).observe(elapsed)
                span.set_attribute("rpc.grpc.status_code", call.grpc_code.value[0])
                log.info(
                    "rpc finished",
                    rpc=method,
                    route=f"{verb} {path}",
                    status=call.http_status,
                    grpc_code=call.grpc_code.name,
                    duration_ms=round(elapsed * 1000, 3),
                )
                request_id_var.reset(rid_token)
                principal_var.reset(principal_token)
                permissions_var.reset(permissions_token)

    async def _abort(
        self, context: grpc.aio.ServicerContext, call: _Call, span: trace.Span, exc: DomainError
    ) -> None:
        call.grpc_code, call.http_status = exc.grpc_code, exc.status_http
        span.set_attribute(f"{tracing.ATTR_PREFIX}error.reason", exc.reason)
        if call.http_status >= 500:
            span.set_status(Status(StatusCode.ERROR, exc.reason))
        await context.abort(exc.grpc_code, exc.message, trailing_metadata=exc.trailing_metadata())


def propagated_metadata() -> dict[str, str]:
    """What a call to another service carries from the current context: request id, principal and permissions,
    W3C trace context. PropagatingClientInterceptor adds it to every call of a channel; a caller can also pass it
    as the call's metadata itself (grpc.aio hands an interceptor that is both unary-unary and unary-stream only
    the unary-unary calls, so server-streaming calls need it passed explicitly)."""
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    rid = request_id_var.get()
    if rid:
        carrier["x-request-id"] = rid
    principal = principal_var.get()
    if principal:
        carrier[PRINCIPAL_HEADER] = principal
        permissions = permissions_var.get()
        if permissions:
            carrier[PERMISSIONS_HEADER] = permissions
    return carrier


class PropagatingClientInterceptor(
    grpc.aio.UnaryUnaryClientInterceptor, grpc.aio.UnaryStreamClientInterceptor
):
    """Carries the request id and W3C trace context to the service being called."""

    @staticmethod
    def _details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        carrier = propagated_metadata()
        metadata = grpc.aio.Metadata(*(details.metadata or ()))
        for k, v in carrier.items():
            metadata[k] = v
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(client_call_details), request)
