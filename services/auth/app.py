"""Wiring of the auth service: AuthService, Envoy's authorization protocol (limits included), the usage consumer."""

from __future__ import annotations

import os
import pathlib
import socket

from envoy.service.auth.v3 import external_auth_pb2_grpc

from llmlab.runtime import ServiceApp, ServiceSpec
from llmlab.runtime.streams import StreamConsumer

from .credentials import AccessTokens, Passwords, SecretDigest, new_secret
from .domain import Auth
from .gateway import AuthorizationServicer, GatewayMetrics
from .repository import AuthRepository
from .routes import RouteTable, load_routes
from .servicer import AuthServicer
from .settings import AuthSettings
from .usage import USAGE_STREAM, UsageCounter


async def build(app: ServiceApp) -> Auth:
    """The auth domain of a started app: secrets from the settings or (generated once) from the schema."""
    assert app.db is not None and app.redis is not None
    s = app.settings
    assert isinstance(s, AuthSettings)
    repo = AuthRepository(app.db)
    jwt_secret = s.jwt_secret or await repo.secret("jwt_secret", new_secret())
    hash_secret = s.key_hash_secret or await repo.secret("key_hash_secret", new_secret())
    return Auth(
        repo, app.redis, s.redis_prefix, s,
        access=AccessTokens(jwt_secret, s.access_token_ttl_seconds), digest=SecretDigest(hash_secret),
        passwords=Passwords(), routes=RouteTable(load_routes()),
    )


async def setup(app: ServiceApp) -> None:
    auth = await build(app)
    await auth.ensure_admin()
    metrics = GatewayMetrics(app.metrics.registry)
    app.add_servicer(
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server,
        AuthorizationServicer(auth, metrics),
        "envoy.service.auth.v3.Authorization",
    )
    app.serve_package("llmlab.auth.v1", {"AuthService": AuthServicer(auth)})
    assert app.redis is not None
    consumer = StreamConsumer(
        app.redis, app.settings.redis_prefix, USAGE_STREAM, app.settings.usage_group,  # type: ignore[attr-defined]
        f"{socket.gethostname()}-{os.getpid()}", UsageCounter(auth).handle, block_ms=500,
    )
    app.background(consumer.run, "usage-counter")


SPEC = ServiceSpec(
    name="auth",
    setup=setup,
    settings_cls=AuthSettings,
    migrations=pathlib.Path(__file__).parent / "migrations",
)
