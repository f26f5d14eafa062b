"""The migration runner against the real Postgres: order, idempotence, checksums, concurrent replicas."""

import asyncio
import pathlib

import asyncpg
import pytest

from llmlab.runtime.db import Migration, MigrationError, load_migrations, migrate

EXPERIMENTS_MIGRATIONS = pathlib.Path(__file__).parents[2] / "services" / "experiments" / "migrations"


async def test_applies_in_order_once(database_url, schema):
    migs = [
        Migration(1, "create", "CREATE TABLE things (id int PRIMARY KEY, name text)"),
        Migration(2, "seed", "INSERT INTO things VALUES (1, 'one')"),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        assert await migrate(conn, schema, migs) == [1, 2]
        assert await migrate(conn, schema, migs) == []
        assert await conn.fetchval(f'SELECT name FROM "{schema}".things WHERE id = 1') == "one"
        versions = await conn.fetch(f'SELECT version FROM "{schema}".schema_migrations ORDER BY version')
        assert [r["version"] for r in versions] == [1, 2]
    finally:
        await conn.close()


async def test_failed_migration_rolls_back_and_stops(database_url, schema):
    migs = [
        Migration(1, "ok", "CREATE TABLE a (id int)"),
        Migration(2, "broken", "CREATE TABLE b (id int); SELECT no_such_function()"),
        Migration(3, "later", "CREATE TABLE c (id int)"),
    ]
    conn = await asyncpg.connect(database_url)
    try:
        with pytest.raises(asyncpg.UndefinedFunctionError):
            await migrate(conn, schema, migs)
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)
        assert sorted(t["tablename"] for t in tables) == ["a", "schema_migrations"]
    finally:
        await conn.close()


async def test_edited_migration_is_refused(database_url, schema):
    conn = await asyncpg.connect(database_url)
    try:
        await migrate(conn, schema, [Migration(1, "x", "CREATE TABLE x (id int)")])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, schema, [Migration(1, "x", "CREATE TABLE x (id bigint)")])
    finally:
        await conn.close()


async def test_concurrent_replicas_apply_each_migration_once(database_url, schema):
    migs = load_migrations(EXPERIMENTS_MIGRATIONS)
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c, schema, migs) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(migs)]
    finally:
        for c in conns:
            await c.close()


def test_file_names_are_checked(tmp_path):
    (tmp_path / "0002_second.sql").write_text("SELECT 2")
    (tmp_path / "0001_first.sql").write_text("SELECT 1")
    assert [m.version for m in load_migrations(tmp_path)] == [1, 2]
    (tmp_path / "3_bad.sql").write_text("SELECT 3")
    with pytest.raises(MigrationError, match="NNNN_lower_snake"):
        load_migrations(tmp_path)


def test_a_missing_folder_is_refused(tmp_path):
    """A service that declares migrations has storage: a wrong folder must not pass for one without tables."""
    with pytest.raises(MigrationError, match="does not exist"):
        load_migrations(tmp_path / "migrations")
