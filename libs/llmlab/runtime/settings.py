"""Settings from the environment: one prefix per service, shared fallbacks, fail fast, one-machine defaults."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

SERVICES = ("auth", "experiments", "inference", "metrics", "analytics", "files")

# One-machine defaults; Kubernetes overrides them with LLMLAB_<SVC>_TARGET / LLMLAB_<SVC>_PORT.
DEFAULT_PORTS = {
    "auth": 50051,
    "experiments": 50052,
    "inference": 50053,
    "metrics": 50054,
    "analytics": 50055,
    "files": 50056,
}

VERSION = "0.1.0"


class SettingsError(ValueError):
    """Raised at start-up when the environment holds an unusable value; lists every problem at once."""


@dataclasses.dataclass(frozen=True)
class ServiceSettings:
    """Settings every service has. Service-specific settings subclass this and add fields with defaults.

    Each field `foo` is read from `LLMLAB_<SERVICE>_FOO`, then from the shared `LLMLAB_FOO`, then the default.
    """

    service: str = ""
    host: str = "127.0.0.1"
    port: int = -1
    database_url: str = "postgresql://postgres@127.0.0.1:5432/llmlab"
    db_schema: str = ""
    db_pool_min: int = 1
    db_pool_max: int = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "llmlab"
    log_level: str = "info"
    log_format: str = "json"
    otlp_endpoint: str = ""
    shutdown_grace_seconds: float = 10.0
    max_message_bytes: int = 64 * 1024 * 1024

    def peer_target(self, peer: str) -> str:
        """gRPC target of another llmlab service (`LLMLAB_<PEER>_TARGET`, default 127.0.0.1:<its default port>)."""
        if peer not in DEFAULT_PORTS:
            raise KeyError(f"unknown service {peer!r}")
        return os.environ.get(f"LLMLAB_{peer.upper()}_TARGET", f"127.0.0.1:{DEFAULT_PORTS[peer]}")


S = TypeVar("S", bound=ServiceSettings)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _convert(name: str, raw: str, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw == "":
            return None
        return _convert(name, raw, args[0])
    if typ is bool:
        low = raw.strip().lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{name}={raw!r} is not a boolean (use true/false)")
    if typ is int:
        try:
            return int(raw.strip())
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not an integer") from None
    if typ is float:
        try:
            return float(raw.strip())
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a number") from None
    if typ is str:
        return raw
    if origin is tuple:
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    raise TypeError(f"unsupported settings type {typ!r} for {name}")


def load_settings(
    cls: type[S], service: str, environ: Mapping[str, str] | None = None, **overrides: Any
) -> S:
    """Build `cls` for `service` from the environment; raise SettingsError naming every bad variable."""
    env = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {"service": service}
    problems: list[str] = []
    for field in dataclasses.fields(cls):
        if field.name == "service":
            continue
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        for var in (f"LLMLAB_{service.upper()}_{field.name.upper()}", f"LLMLAB_{field.name.upper()}"):
            if var in env:
                try:
                    values[field.name] = _convert(var, env[var], hints[field.name])
                except ValueError as exc:
                    problems.append(str(exc))
                break
    if values.get("port", -1) == -1 and "port" in {f.name for f in dataclasses.fields(cls)}:
        values["port"] = DEFAULT_PORTS.get(service, 0)
    if not values.get("db_schema"):
        values["db_schema"] = service
    if problems:
        raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))
    settings = cls(**values)
    problems = _validate(settings)
    if problems:
        raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))
    return settings


def _validate(s: ServiceSettings) -> list[str]:
    problems = []
    prefix = f"LLMLAB_{s.service.upper()}_"
    if not 0 <= s.port <= 65535:
        problems.append(f"{prefix}PORT={s.port} is outside 0..65535 (0 picks a free port)")
    if not s.db_schema.isidentifier() or s.db_schema.lower() != s.db_schema:
        problems.append(f"{prefix}DB_SCHEMA={s.db_schema!r} must be a lower-case SQL identifier")
    if s.db_pool_min < 0 or s.db_pool_max < max(1, s.db_pool_min):
        problems.append(f"db pool sizes must satisfy 0 <= min <= max, max >= 1 (got {s.db_pool_min}/{s.db_pool_max})")
    if not s.database_url.startswith(("postgres://", "postgresql://")):
        problems.append(f"DATABASE_URL must be a postgresql:// URL (got {s.database_url!r})")
    if not s.redis_url.startswith(("redis://", "rediss://", "unix://")):
        problems.append(f"REDIS_URL must be a redis:// URL (got {s.redis_url!r})")
    if s.log_level.lower() not in {"debug", "info", "warning", "error"}:
        problems.append(f"LOG_LEVEL={s.log_level!r} must be debug, info, warning or error")
    if s.log_format not in {"json", "console"}:
        problems.append(f"LOG_FORMAT={s.log_format!r} must be json or console")
    if s.shutdown_grace_seconds < 0:
        problems.append("SHUTDOWN_GRACE_SECONDS must be >= 0")
    return problems
