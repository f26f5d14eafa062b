"""The read model's consumers: one batch consumer per event stream in the `analytics` group, and its lag gauge."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable

import redis.asyncio as redis
import structlog
from prometheus_client import Counter, Gauge

from llmlab.runtime import ServiceApp
from llmlab.runtime.streams import BatchStreamConsumer, StreamMessage, stream_key

from .projector import Applied, Projector
from .settings import AnalyticsSettings

log = structlog.get_logger(__name__)

LAG_POLL_SECONDS = 2.0


class ConsumerMetrics:
    """`analytics_consumer_lag{stream}`: entries of the stream not yet delivered to the group (XINFO GROUPS lag);
    `analytics_consumer_pending{stream}`: delivered but not acked; `analytics_events_total{stream,type}`."""

    def __init__(self, registry) -> None:  # type: ignore[no-untyped-def]
        self.lag = Gauge("analytics_consumer_lag", "Stream entries not yet read by the analytics consumer group",
                         ["stream"], registry=registry)
        self.pending = Gauge("analytics_consumer_pending", "Stream entries read but not yet acknowledged",
                             ["stream"], registry=registry)
        self.events = Counter("analytics_events_total", "Events applied to the analytics read model",
                              ["stream", "type"], registry=registry)


async def group_lag(client: redis.Redis, key: str, group: str) -> tuple[int, int]:
    """(lag, pending) of a consumer group; lag counts the whole stream while the group does not exist yet."""
    try:
        groups = await client.xinfo_groups(key)
    except redis.ResponseError:
        return 0, 0
    for g in groups:
        name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
        if name == group:
            lag = g.get("lag")
            if lag is None:  # Redis cannot tell after deletions in the stream: count what follows the cursor
                last = g["last-delivered-id"]
                lag = len(await client.xrange(key, min=f"({last.decode() if isinstance(last, bytes) else last}"))
            return int(lag), int(g.get("pending") or 0)
    return int(await client.xlen(key)), 0


def start_consumers(app: ServiceApp, projector: Projector, on_applied: Callable[[Applied], Awaitable[None]],
                    metrics: ConsumerMetrics) -> list[BatchStreamConsumer]:
    s = app.settings
    assert isinstance(s, AnalyticsSettings) and app.redis is not None
    name = f"{socket.gethostname()}-{os.getpid()}"
    consumers = []
    for stream in s.streams:
        async def handle(batch: list[StreamMessage], stream: str = stream) -> None:
            applied = await projector.apply(stream, batch)
            for _, m in applied.messages:
                metrics.events.labels(stream, m.type).inc()
            await on_applied(applied)

        consumer = BatchStreamConsumer(app.redis, s.redis_prefix, stream, s.consumer_group, name, handle,
                                       batch=s.consumer_batch, block_ms=500,
                                       claim_idle_ms=s.consumer_claim_idle_ms)
        app.background(consumer.run, f"events-{stream}")
        consumers.append(consumer)

    async def watch_lag(stop: asyncio.Event) -> None:
        assert app.redis is not None
        while not stop.is_set():
            for stream in s.streams:
                try:
                    lag, pending = await group_lag(app.redis, stream_key(s.redis_prefix, stream), s.consumer_group)
                except (redis.ConnectionError, redis.TimeoutError):
                    continue
                metrics.lag.labels(stream).set(lag)
                metrics.pending.labels(stream).set(pending)
            try:
                await asyncio.wait_for(stop.wait(), LAG_POLL_SECONDS)
            except TimeoutError:
                pass

    app.background(watch_lag, "consumer-lag")
    return consumers
