"""One-machine stack: a process supervisor, and Postgres/Redis that start embedded when none is reachable."""

from ._net import free_port, port_open
from ._servers import (
    DEFAULT_POSTGRES_URL,
    DEFAULT_REDIS_URL,
    EMBEDDED_POSTGRES_PORT,
    EMBEDDED_REDIS_PORT,
    PostgresHandle,
    RedisHandle,
    ensure_postgres,
    ensure_redis,
)
from ._supervisor import DevstackError, ProcessSpec, ReadyCheck, Supervisor, SupervisorError

__all__ = [
    "DEFAULT_POSTGRES_URL",
    "DEFAULT_REDIS_URL",
    "EMBEDDED_POSTGRES_PORT",
    "EMBEDDED_REDIS_PORT",
    "DevstackError",
    "PostgresHandle",
    "ProcessSpec",
    "ReadyCheck",
    "RedisHandle",
    "Supervisor",
    "SupervisorError",
    "ensure_postgres",
    "ensure_redis",
    "free_port",
    "port_open",
]
