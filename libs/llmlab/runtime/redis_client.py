"""The shared redis.asyncio client factory and key naming."""

from __future__ import annotations

import redis.asyncio as redis


def create_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, decode_responses=False, health_check_interval=30)


def key(prefix: str, *parts: str) -> str:
    """`<prefix>:<part>:<part>`: every llmlab key lives under one configurable prefix."""
    return ":".join((prefix, *parts))
