"""asyncpg pool per service schema, and the migration runner (ordered SQL files under an advisory lock)."""

from __future__ import annotations

import hashlib
import json
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
        # Plans for the values at hand: a list's best plan depends on its filter's selectivity (a search term
        # that matches every row wants the sort index, a rare one the trigram index); a generic plan cached after
        # five executions would pick one for all (docs/scale.md). Planning costs well under a millisecond here.
        server_settings={"search_path": f"{schema},public", "application_name": app_name,
                         "plan_cache_mode": "force_custom_plan"},
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


# Lists count matching rows exactly up to this many, and only when the planner expects the count to cost at most
# COUNT_COST_LIMIT (its cost units; ~5,000 is a few thousand random page reads, ~10 ms here); otherwise the
# planner's row estimate stands in, flagged in the body (docs/scale.md).
EXACT_COUNT_CAP = 10_000
COUNT_COST_LIMIT = 5_000.0


@dataclass(frozen=True)
class Total:
    """How many rows a list query matches: exact, or the planner's estimate when over EXACT_COUNT_CAP."""

    value: int
    estimated: bool = False


async def count_capped(conn: asyncpg.Connection, from_where: str, args: list[object],
                       cap: int = EXACT_COUNT_CAP, cost_limit: float = COUNT_COST_LIMIT) -> Total:
    """How many rows `SELECT 1 {from_where}` returns: exact (a count that stops at cap + 1) when the planner
    expects at most `cap` rows for at most `cost_limit`, else its row estimate, flagged (docs/scale.md: an exact
    count of a million rows costs ~100 ms a page, and a selective filter without an index scans the table to
    count even a few matches)."""
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) SELECT 1 {from_where}", *args)
    top = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    estimate = int(top["Plan Rows"])
    if estimate > cap or float(top["Total Cost"]) > cost_limit:
        return Total(estimate, estimated=True)
    n = await conn.fetchval(f"SELECT count(*) FROM (SELECT 1 {from_where} LIMIT {int(cap) + 1}) capped", *args)
    return Total(n) if n <= cap else Total(max(estimate, cap + 1), estimated=True)


def pool_in_use(pool: asyncpg.Pool) -> int:
    return pool.get_size() - pool.get_idle_size()
