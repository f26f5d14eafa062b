"""asyncpg pool per service schema, and the migration runner (ordered SQL files under an advisory lock)."""

from __future__ import annotations

import hashlib
import pathlib
import re
from dataclasses import dataclass

import asyncpg
import structlog

log = structlog.get_logger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


class MigrationError(RuntimeError):
    """A migration file is malformed, or an applied migration was edited afterwards."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: pathlib.Path) -> list[Migration]:
    """`NNNN_name.sql` files in version order; gaps are allowed, duplicates and stray files are not."""
    if not directory.is_dir():
        # A service declares a migrations folder only when it has storage; a wrong path must not pass as "no tables".
        raise MigrationError(f"migrations folder {directory} does not exist")
    migrations: dict[int, Migration] = {}
    for path in sorted(directory.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file {path.name!r} must be named NNNN_lower_snake.sql")
        version = int(m.group(1))
        if version in migrations:
            raise MigrationError(f"two migrations have version {version:04d}")
        migrations[version] = Migration(version, m.group(2), path.read_text())
    return [migrations[v] for v in sorted(migrations)]


def _quote_ident(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"unsafe SQL identifier {name!r}")
    return f'"{name}"'


async def migrate(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> list[int]:
    """Apply pending migrations to `schema`; return the versions applied. Safe to run from many replicas."""
    q_schema = _quote_ident(schema)
    lock_key = f"llmlab.migrate.{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtext($1))", lock_key)
    applied_now: list[int] = []
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {q_schema}")
        await conn.execute(
            f"""CREATE TABLE IF NOT EXISTS {q_schema}.schema_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    checksum text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch(f"SELECT version, name, checksum FROM {q_schema}.schema_migrations")
        applied = {r["version"]: r for r in rows}
        for mig in migrations:
            if mig.version in applied:
                if applied[mig.version]["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"migration {mig.version:04d}_{mig.name} of schema {schema} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(f"SET LOCAL search_path TO {q_schema}, public")
                await conn.execute(mig.sql)
                await conn.execute(
                    f"INSERT INTO {q_schema}.schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    mig.version,
                    mig.name,
                    mig.checksum,
                )
            applied_now.append(mig.version)
            log.info("migration applied", schema=schema, version=mig.version, name=mig.name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtext($1))", lock_key)
    return applied_now


async def create_pool(dsn: str, schema: str, *, min_size: int, max_size: int, app_name: str) -> asyncpg.Pool:
    """A pool whose connections see `schema` first on their search_path."""
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        server_settings={"search_path": f"{schema},public", "application_name": app_name},
        command_timeout=30,
    )


async def ping(dsn: str) -> None:
    """A live check of the database for a service that keeps no pool: one connection, `SELECT 1`, closed."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.fetchval("SELECT 1")
    finally:
        await conn.close()


def contains_pattern(text: str) -> str:
    """An ILIKE pattern matching `text` anywhere, its own %, _ and backslash taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def pool_in_use(pool: asyncpg.Pool) -> int:
    return pool.get_size() - pool.get_idle_size()
