"""Shared fixtures: the real Postgres and Redis, isolated per test session by schema name and key prefix."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
import redis.asyncio as redis

TEST_DATABASE_URL = os.environ.get("LLMLAB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
TEST_REDIS_URL = os.environ.get("LLMLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def run_id() -> str:
    """A short id that names this session's schemas and Redis keys, so parallel runs never collide."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def database_url() -> str:
    return TEST_DATABASE_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    return TEST_REDIS_URL


async def drop_schemas(dsn: str, prefix: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        names = await conn.fetch(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", prefix.replace("_", "\\_") + "%"
        )
        for row in names:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()


async def delete_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        async for k in client.scan_iter(match=f"{prefix}:*", count=500):
            await client.delete(k)
    finally:
        await client.aclose()


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema name for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    await drop_schemas(database_url, name)


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A fresh key prefix for one test; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:12]}"
    yield prefix
    await delete_keys(redis_url, prefix)


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    await client.aclose()
