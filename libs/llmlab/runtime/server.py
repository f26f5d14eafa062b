"""The one grpc.aio bootstrap every llmlab service starts from: resources, health, reflection, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import pathlib
import pkgutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc
import psutil
import redis.asyncio as redis
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from llmlab.common.v1 import service_info_pb2, service_info_pb2_grpc

from . import db
from .interceptors import ObservabilityInterceptor, PropagatingClientInterceptor
from .logs import configure_logging
from .metrics import ServiceMetrics
from .redis_client import create_redis
from .settings import VERSION, ServiceSettings, SettingsError, load_settings
from .streams import EventPublisher
from .tracing import make_tracer_provider, tracer_for

METADATA_BYTES = 64 * 1024

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ServiceSpec:
    """What a service declares; the bootstrap does the rest."""

    name: str
    setup: Callable[[ServiceApp], Awaitable[None]]
    settings_cls: type[ServiceSettings] = ServiceSettings
    # A service with storage declares its migrations folder: its schema is migrated at start and `app.db` is a pool
    # on it. Without one the service creates no schema and opens no Postgres pool.
    migrations: pathlib.Path | None = None
    uses_redis: bool = True
    # Extra grpc.aio server options of this service (e.g. flow control for streamed uploads).
    server_options: tuple[tuple[str, Any], ...] = ()


class _ServiceInfo(service_info_pb2_grpc.ServiceInfoServiceServicer):
    def __init__(self, app: ServiceApp) -> None:
        self._app = app

    async def GetServiceInfo(self, request, context):  # type: ignore[no-untyped-def]
        return await self._app.service_info()

    async def ScrapeMetrics(self, request, context):  # type: ignore[no-untyped-def]
        return service_info_pb2.ScrapeMetricsResponse(text=self._app.metrics.render())


class ServiceApp:
    """A running service: its settings, pools, clients and gRPC server. Nothing is created at import time."""

    def __init__(self, spec: ServiceSpec, settings: ServiceSettings) -> None:
        self.spec = spec
        self.name = spec.name
        self.settings = settings
        self.log = structlog.get_logger().bind(service=spec.name)
        self.metrics = ServiceMetrics(spec.name)
        self.tracer_provider = make_tracer_provider(spec.name, settings.otlp_endpoint)
        self.tracer = tracer_for(self.tracer_provider, f"llmlab.{spec.name}")
        self.db: asyncpg.Pool | None = None
        self.redis: redis.Redis | None = None
        self.events: EventPublisher | None = None
        self.health = HealthServicer()
        self.port: int | None = None
        self.started_at = time.monotonic()
        self._server: grpc.aio.Server | None = None
        self._service_names: list[str] = []
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []
        self._stop_event = asyncio.Event()

    # -- what setup() uses -------------------------------------------------------------------------------
    def add_servicer(self, add_fn: Callable[[Any, grpc.aio.Server], None], servicer: Any, full_name: str) -> None:
        """Register a servicer; `full_name` (e.g. llmlab.experiments.v1.ExperimentService) gets health + reflection."""
        assert self._server is not None, "add_servicer is called from setup()"
        add_fn(servicer, self._server)
        self._service_names.append(full_name)

    def serve_package(self, package: str, implementations: dict[str, Any]) -> None:
        """Serve every gRPC service of a generated package (e.g. ``llmlab.experiments.v1``).

        Services named in `implementations` get that servicer; the others get the generated base servicer, which
        answers UNIMPLEMENTED (HTTP 501 in the family's error shape) until their issue lands.
        """
        assert self._server is not None, "serve_package is called from setup()"
        remaining = dict(implementations)
        root = importlib.import_module(package)
        for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda i: i.name):
            if not info.name.endswith("_pb2"):
                continue
            pb2 = importlib.import_module(f"{package}.{info.name}")
            if not pb2.DESCRIPTOR.services_by_name:
                continue
            grpc_mod = importlib.import_module(f"{package}.{info.name}_grpc")
            for name, desc in pb2.DESCRIPTOR.services_by_name.items():
                servicer = remaining.pop(name, None) or getattr(grpc_mod, f"{name}Servicer")()
                self.add_servicer(getattr(grpc_mod, f"add_{name}Servicer_to_server"), servicer, desc.full_name)
        if remaining:
            raise ValueError(f"{package} has no services named {sorted(remaining)}")

    def background(self, factory: Callable[[asyncio.Event], Coroutine[Any, Any, None]], name: str) -> None:
        """Run a long-lived task (stream consumer, worker) until shutdown; it gets the stop event."""
        self._tasks.append(asyncio.create_task(factory(self._stop_event), name=f"{self.name}:{name}"))

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        self._on_stop.append(callback)

    def channel(self, peer: str) -> grpc.aio.Channel:
        """A shared channel to another llmlab service, propagating request id and trace context."""
        if peer not in self._channels:
            self._channels[peer] = grpc.aio.insecure_channel(
                self.settings.peer_target(peer),
                interceptors=[PropagatingClientInterceptor()],
                options=[
                    ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                    ("grpc.max_send_message_length", self.settings.max_message_bytes),
                ],
            )
        return self._channels[peer]

    async def service_info(self) -> service_info_pb2.GetServiceInfoResponse:
        """Identity, uptime, resource use and live dependency checks of this process."""
        return service_info_pb2.GetServiceInfoResponse(
            service=self.name,
            version=VERSION,
            uptime_seconds=time.monotonic() - self.started_at,
            memory_rss_bytes=float(psutil.Process().memory_info().rss),
            db_connections_active=db.pool_in_use(self.db) if self.db is not None else -1,
            active_requests=self.metrics.in_flight,
            dependencies=await self.check_dependencies(),
        )

    async def check_dependencies(self) -> dict[str, str]:
        """Live checks of Postgres and Redis with a short timeout each."""
        result: dict[str, str] = {}

        async def probe(name: str, check: Callable[[], Awaitable[Any]]) -> None:
            try:
                await asyncio.wait_for(check(), timeout=2.0)
                result[name] = "healthy"
            except Exception as exc:
                result[name] = f"unhealthy: {type(exc).__name__}"

        checks = []
        if self.db is not None:
            checks.append(probe("postgres", lambda: self.db.fetchval("SELECT 1")))  # type: ignore[union-attr]
        if self.redis is not None:
            checks.append(probe("redis", self.redis.ping))  # type: ignore[union-attr]
        await asyncio.gather(*checks)
        return result

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> int:
        s = self.settings
        if self.spec.migrations is not None:
            conn = await asyncpg.connect(s.database_url)
            try:
                await db.migrate(conn, s.db_schema, db.load_migrations(self.spec.migrations))
            finally:
                await conn.close()
            self.db = await db.create_pool(
                s.database_url, s.db_schema, min_size=s.db_pool_min, max_size=s.db_pool_max,
                app_name=f"llmlab-{self.name}",
            )
            pool = self.db
            self.metrics.track_db_pool(lambda: db.pool_in_use(pool))
        if self.spec.uses_redis:
            self.redis = create_redis(s.redis_url)
            await self.redis.ping()
            self.events = EventPublisher(self.redis, s.redis_prefix)
        self._server = grpc.aio.server(
            interceptors=[ObservabilityInterceptor(self.name, self.tracer, self.metrics)],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Above the gateway's own request-header cap (gateway/render.py, 16 KiB): whatever headers Envoy
                # accepts, a service accepts too. gRPC's default (8 KiB soft, 16 KiB hard) refused a 16 KB header
                # as RESOURCE_EXHAUSTED, which clients saw as a 429 naming every internal header.
                ("grpc.max_metadata_size", METADATA_BYTES),
                ("grpc.absolute_max_metadata_size", METADATA_BYTES),
                *self.spec.server_options,
            ],
        )
        await self.spec.setup(self)
        service_info_pb2_grpc.add_ServiceInfoServiceServicer_to_server(_ServiceInfo(self), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        names = [*self._service_names, "llmlab.common.v1.ServiceInfoService"]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            self._server,
        )
        self.port = self._server.add_insecure_port(f"{s.host}:{s.port}")
        if self.port == 0:
            raise RuntimeError(f"{self.name}: could not bind {s.host}:{s.port}")
        await self._server.start()
        for name in ["", *names]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.started_at = time.monotonic()
        self.log.info("service started", address=f"{s.host}:{self.port}", pid=os.getpid(), version=VERSION)
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING -> drain in-flight RPCs within the grace period -> stop workers -> close pools."""
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        self.log.info("service stopping", grace_seconds=grace)
        await self.health.enter_graceful_shutdown()
        self._stop_event.set()
        if self._server is not None:
            await self._server.stop(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for callback in reversed(self._on_stop):
            with contextlib.suppress(Exception):
                await callback()
        for channel in self._channels.values():
            await channel.close()
        if self.db is not None:
            await self.db.close()
        if self.redis is not None:
            await self.redis.aclose()
        self.tracer_provider.shutdown()
        self.log.info("service stopped")


async def serve(spec: ServiceSpec, settings: ServiceSettings) -> None:
    """Run until SIGTERM/SIGINT, then stop gracefully."""
    app = ServiceApp(spec, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await app.start()
    # A line supervisors and tests can wait for; carries the bound port when port 0 was asked for.
    print(f"LLMLAB_READY service={app.name} port={app.port}", flush=True)
    await stop.wait()
    await app.stop()


def main(spec: ServiceSpec, *, settings_of: str | None = None, port_env: str | None = None) -> None:
    """Entry point of `python -m services.<name>` (and of a worker process type: `settings_of` names the service
    whose LLMLAB_<SERVICE>_* settings it reads, `port_env` the variable of its own gRPC health port, 0: any).
    Settings fail fast with exit code 2; a start that cannot reach its stores exits 1."""
    try:
        port = int(os.environ.get(port_env, "0")) if port_env else None
        settings = (load_settings(spec.settings_cls, settings_of or spec.name, port=port) if port is not None
                    else load_settings(spec.settings_cls, spec.name))
    except (SettingsError, ValueError) as exc:
        print(f"llmlab-{spec.name}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(spec.name, settings.log_level, settings.log_format)
    try:
        asyncio.run(serve(spec, settings))
    except (OSError, asyncpg.PostgresError, redis.ConnectionError) as exc:
        log.error("service failed to start", service=spec.name, error=str(exc))
        raise SystemExit(1) from None
