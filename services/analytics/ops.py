"""OpsService: the platform's health, readiness and metrics, from live probes of every service and dependency."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import grpc
import psutil
from google.api import httpbody_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmlab.analytics.v1 import ops_service_pb2 as pb
from llmlab.analytics.v1 import ops_service_pb2_grpc as pb_grpc
from llmlab.common.v1 import service_info_pb2, service_info_pb2_grpc
from llmlab.inference.v1 import inference_service_pb2, inference_service_pb2_grpc
from llmlab.openapi import reference, served_document
from llmlab.runtime import SERVICES, VERSION, NotFound, ServiceApp, Unavailable
from llmlab.runtime.context import ADMIN, current_principal
from llmlab.runtime.envelope import iso, meta, utcnow
from llmlab.runtime.metrics import merge_expositions

PROBE_TIMEOUT = 2.0
HEALTHY, UNHEALTHY = "healthy", "unhealthy"


@dataclass
class ServiceProbe:
    """What one service said about itself, or why it could not be asked."""

    name: str
    target: str
    serving: bool
    info: service_info_pb2.GetServiceInfoResponse | None
    error: str = ""


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f}GB"


class OpsServicer(pb_grpc.OpsServiceServicer):
    """Every answer is computed from probes made for that request; nothing is cached or assumed."""

    def __init__(self, app: ServiceApp) -> None:
        self._app = app

    async def _probe_service(self, name: str) -> ServiceProbe:
        if name == self._app.name:
            return ServiceProbe(name, f"127.0.0.1:{self._app.port}", True, await self._app.service_info())
        channel = self._app.channel(name)
        target = self._app.settings.peer_target(name)
        try:
            health, info = await asyncio.gather(
                health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=PROBE_TIMEOUT),
                service_info_pb2_grpc.ServiceInfoServiceStub(channel).GetServiceInfo(
                    service_info_pb2.GetServiceInfoRequest(), timeout=PROBE_TIMEOUT
                ),
            )
        except grpc.aio.AioRpcError as exc:
            return ServiceProbe(name, target, False, None, exc.code().name)
        return ServiceProbe(name, target, health.status == health_pb2.HealthCheckResponse.SERVING, info)

    async def _probe_all(self) -> dict[str, ServiceProbe]:
        probes = await asyncio.gather(*(self._probe_service(s) for s in SERVICES))
        return {p.name: p for p in probes}

    async def _dependencies(self) -> dict[str, pb.DependencyHealth]:
        async def timed(check: Any) -> pb.DependencyHealth:
            started = time.perf_counter()
            try:
                await asyncio.wait_for(check(), PROBE_TIMEOUT)
            except Exception as exc:
                return pb.DependencyHealth(
                    status=UNHEALTHY, latency_ms=(time.perf_counter() - started) * 1000, error=type(exc).__name__
                )
            return pb.DependencyHealth(status=HEALTHY, latency_ms=round((time.perf_counter() - started) * 1000, 3))

        # Through the service's own pool (its read model's schema): the same path every analytics answer takes.
        assert self._app.redis is not None and self._app.db is not None
        pool, redis = self._app.db, self._app.redis
        postgres, cache = await asyncio.gather(timed(lambda: pool.fetchval("SELECT 1")), timed(redis.ping))
        return {"postgres": postgres, "redis": cache}

    @staticmethod
    def _overall(deps: dict[str, pb.DependencyHealth], services: dict[str, ServiceProbe]) -> str:
        if any(d.status != HEALTHY for d in deps.values()):
            return UNHEALTHY
        if not all(p.serving for p in services.values()):
            return "degraded"
        return HEALTHY

    async def _model_loaded(self, services: dict[str, ServiceProbe]) -> bool:
        """Whether the inference engine holds a model, as it says itself."""
        if not services["inference"].serving:
            return False
        stub = inference_service_pb2_grpc.InferenceServiceStub(self._app.channel("inference"))
        try:
            status = await stub.GetEngineStatus(inference_service_pb2.GetEngineStatusRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return status.model_loaded

    async def GetHealth(self, request: pb.GetHealthRequest, context: Any) -> pb.GetHealthResponse:
        deps, services = await asyncio.gather(self._dependencies(), self._probe_all())
        rss = sum(p.info.memory_rss_bytes for p in services.values() if p.info is not None)
        return pb.GetHealthResponse(
            status=self._overall(deps, services),
            model_loaded=await self._model_loaded(services),
            memory_usage=f"{_gb(rss)}/{_gb(psutil.virtual_memory().total)}",
            # This very request is in flight in this service; it is not counted.
            active_connections=max(0, sum(p.info.active_requests for p in services.values() if p.info) - 1),
        )

    async def GetReadiness(self, request: pb.GetReadinessRequest, context: Any) -> pb.GetReadinessResponse:
        deps, services = await asyncio.gather(self._dependencies(), self._probe_all())

        def status(ok: bool) -> str:
            return HEALTHY if ok else UNHEALTHY

        components = pb.ReadinessComponents(
            database=deps["postgres"].status,
            cache=deps["redis"].status,
            storage=status(services["files"].serving),
            model=status(await self._model_loaded(services)),
        )
        fields = {f.name: getattr(components, f.name) for f in components.DESCRIPTOR.fields}
        if any(v != HEALTHY for v in fields.values()):
            raise Unavailable(
                "The platform is not ready", reason="NOT_READY", details={"status": UNHEALTHY, "components": fields}
            )
        return pb.GetReadinessResponse(status=HEALTHY, components=components)

    async def GetDetailedHealth(
        self, request: pb.GetDetailedHealthRequest, context: Any
    ) -> pb.GetDetailedHealthResponse:
        deps, services = await asyncio.gather(self._dependencies(), self._probe_all())
        out = pb.GetDetailedHealthResponse(
            status=self._overall(deps, services), version=VERSION, timestamp=iso(utcnow())
        )
        principal = current_principal()
        if principal is not None and not principal.allows(ADMIN):
            # Addresses, memory and uptimes help an attacker more than an ordinary key holder: admins only.
            return out
        for name, dep in deps.items():
            out.dependencies[name].CopyFrom(dep)
        for name, probe in services.items():
            entry = out.services[name]
            entry.status = HEALTHY if probe.serving else UNHEALTHY
            entry.target = probe.target
            entry.error = probe.error
            if probe.info is not None:
                entry.version = probe.info.version
                entry.uptime_seconds = round(probe.info.uptime_seconds, 3)
                entry.memory_rss_bytes = probe.info.memory_rss_bytes
                entry.db_connections_active = probe.info.db_connections_active
                entry.active_requests = probe.info.active_requests
        return out

    async def GetApiHealth(self, request: pb.GetApiHealthRequest, context: Any) -> pb.GetApiHealthResponse:
        deps, services = await asyncio.gather(self._dependencies(), self._probe_all())

        def status(probe: ServiceProbe) -> str:
            return HEALTHY if probe.serving else UNHEALTHY

        return pb.GetApiHealthResponse(
            success=True,
            data=pb.ApiHealthData(
                status=self._overall(deps, services),
                timestamp=iso(utcnow()),
                version=VERSION,
                services=pb.ApiHealthServices(
                    database=deps["postgres"].status,
                    llm_service=status(services["inference"]),
                    metrics_engine=status(services["metrics"]),
                ),
            ),
            meta=meta(),
        )

    async def GetMetrics(self, request: pb.GetMetricsRequest, context: Any) -> httpbody_pb2.HttpBody:
        async def scrape(name: str) -> tuple[str, str]:
            if name == self._app.name:
                return name, self._app.metrics.render()
            stub = service_info_pb2_grpc.ServiceInfoServiceStub(self._app.channel(name))
            try:
                reply = await stub.ScrapeMetrics(service_info_pb2.ScrapeMetricsRequest(), timeout=PROBE_TIMEOUT)
            except grpc.aio.AioRpcError:
                return name, ""
            return name, reply.text

        texts = dict(await asyncio.gather(*(scrape(s) for s in SERVICES)))
        up = "\n".join(
            f'llmlab_service_up{{service="{name}"}} {1 if text else 0}' for name, text in sorted(texts.items())
        )
        body = merge_expositions({k: v for k, v in texts.items() if v})
        body += "# HELP llmlab_service_up Whether the service answered the scrape\n"
        body += "# TYPE llmlab_service_up gauge\n" + up + "\n"
        return httpbody_pb2.HttpBody(content_type="text/plain; version=0.0.4; charset=utf-8", data=body.encode())

    async def GetOpenApiDocument(self, request: pb.GetOpenApiDocumentRequest, context: Any) -> httpbody_pb2.HttpBody:
        document = await asyncio.to_thread(served_document, VERSION)  # built once, off the event loop
        return httpbody_pb2.HttpBody(content_type="application/json", data=document)

    async def GetApiReference(self, request: pb.GetApiReferenceRequest, context: Any) -> httpbody_pb2.HttpBody:
        return httpbody_pb2.HttpBody(content_type="text/html; charset=utf-8", data=reference.page())

    async def GetApiReferenceAsset(
        self, request: pb.GetApiReferenceAssetRequest, context: Any
    ) -> httpbody_pb2.HttpBody:
        found = await asyncio.to_thread(reference.asset, request.name)
        if found is None:
            raise NotFound("No such file of the API reference", reason="NOT_FOUND")
        content_type, data = found
        return httpbody_pb2.HttpBody(content_type=content_type, data=data)
