"""Redis Streams: domain events and job queues with consumer groups, reclaim of stale messages, dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis
import structlog
from redis.exceptions import ResponseError

from .context import current_request_id
from .redis_client import key

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class StreamMessage:
    """One event or job as a consumer sees it."""

    id: str
    type: str
    data: dict[str, Any]
    request_id: str
    published_at: float
    deliveries: int = 1


def stream_key(prefix: str, stream: str) -> str:
    return key(prefix, "stream", stream)


class EventPublisher:
    """Appends typed JSON events to streams (XADD with an approximate length cap)."""

    def __init__(self, client: redis.Redis, prefix: str, *, maxlen: int = 100_000) -> None:
        self._redis = client
        self._prefix = prefix
        self._maxlen = maxlen

    async def publish(self, stream: str, event_type: str, data: dict[str, Any]) -> str:
        fields = {
            "type": event_type,
            "data": json.dumps(data, separators=(",", ":"), default=str),
            "request_id": current_request_id(),
            "ts": f"{time.time():.6f}",
        }
        msg_id = await self._redis.xadd(
            stream_key(self._prefix, stream), fields, maxlen=self._maxlen, approximate=True
        )
        return msg_id.decode() if isinstance(msg_id, bytes) else msg_id


Handler = Callable[[StreamMessage], Awaitable[None]]


def _decode(msg_id: Any, fields: dict[Any, Any], deliveries: int = 1) -> StreamMessage:
    f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
         for k, v in fields.items()}
    return StreamMessage(
        id=msg_id.decode() if isinstance(msg_id, bytes) else msg_id,
        type=f.get("type", ""),
        data=json.loads(f.get("data") or "{}"),
        request_id=f.get("request_id", ""),
        published_at=float(f.get("ts") or 0),
        deliveries=deliveries,
    )


class StreamConsumer:
    """A member of a consumer group. At-least-once: a message is acked only after its handler returns.

    A message whose handler failed, or whose consumer died, stays pending; after `claim_idle_ms` any member
    reclaims it (XAUTOCLAIM). After `max_deliveries` failed attempts it moves to `<stream>:dead` and is acked,
    so one poisonous message cannot block a queue. Handlers must therefore be idempotent.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        stream: str,
        group: str,
        consumer: str,
        handler: Handler,
        *,
        batch: int = 16,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
    ) -> None:
        self._redis = client
        self.stream = stream_key(prefix, stream)
        self.dead_letter = self.stream + ":dead"
        self.group = group
        self.consumer = consumer
        self._handler = handler
        self._batch = batch
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._max_deliveries = max_deliveries

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _deliveries(self, msg_id: Any) -> int:
        pending = await self._redis.xpending_range(self.stream, self.group, msg_id, msg_id, 1)
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _handle(self, msg: StreamMessage, raw_fields: dict[Any, Any]) -> bool:
        try:
            await self._handler(msg)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream handler failed", stream=self.stream, message_id=msg.id,
                          deliveries=msg.deliveries)
            if msg.deliveries >= self._max_deliveries:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(self.dead_letter, {**raw_fields, "failed_group": self.group})
                    pipe.xack(self.stream, self.group, msg.id)
                    await pipe.execute()
                log.error("message moved to dead letter stream", stream=self.stream, message_id=msg.id)
            return False
        await self._redis.xack(self.stream, self.group, msg.id)
        return True

    async def touch(self, msg_id: str) -> None:
        """Reset the idle time of a message this member is still working on, so that no other member reclaims it
        while its handler is alive (XCLAIM to itself; the delivery count is unchanged)."""
        await self._redis.xclaim(self.stream, self.group, self.consumer, 0, [msg_id], justid=True)

    async def reclaim(self) -> int:
        """Take over messages left pending longer than claim_idle_ms by any member; handle them."""
        handled = 0
        start = "0-0"
        while True:
            result = await self._redis.xautoclaim(
                self.stream, self.group, self.consumer, self._claim_idle_ms, start_id=start, count=self._batch
            )
            start, messages = result[0], result[1]
            for msg_id, fields in messages:
                if fields is None:
                    continue
                msg = _decode(msg_id, fields, await self._deliveries(msg_id))
                handled += await self._handle(msg, fields)
            if start in (b"0-0", "0-0") or not messages:
                return handled

    async def read_new(self, block_ms: int | None = None) -> int:
        """Read and handle up to `batch` new messages, blocking up to block_ms for the first."""
        result = await self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self._batch,
            block=self._block_ms if block_ms is None else block_ms,
        )
        handled = 0
        for _stream, messages in result or []:
            for msg_id, fields in messages:
                handled += await self._handle(_decode(msg_id, fields), fields)
        return handled

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set; reclaims stale messages every claim_idle_ms."""
        await self.ensure_group()
        next_reclaim = 0.0
        while not stop.is_set():
            try:
                if time.monotonic() >= next_reclaim:
                    await self.reclaim()
                    next_reclaim = time.monotonic() + self._claim_idle_ms / 1000
                await self.read_new()
            except asyncio.CancelledError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable, retrying", stream=self.stream, error=str(exc))
                await asyncio.sleep(1)


class PriorityConsumer:
    """One member of a consumer group over several streams, read in priority order (the first stream first), with
    up to `concurrency` messages in hand at once. Each stream keeps StreamConsumer's rules (ack after the handler,
    XAUTOCLAIM of messages idle past claim_idle_ms, dead letters after max_deliveries); in addition, the claim on a
    message is renewed every third of claim_idle_ms while its handler runs, so only a member that died (or hangs
    its event loop) loses its messages, however long a handler takes.

    Order: stale messages (reclaim) first, then new ones, each from the highest-priority stream that has any; when
    every stream is empty a member blocks on all of them at once."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        streams: list[str],
        group: str,
        consumer: str,
        handler: Handler,
        *,
        concurrency: int = 1,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
    ) -> None:
        self._redis = client
        self.consumers = [StreamConsumer(client, prefix, s, group, consumer, handler, batch=1, block_ms=block_ms,
                                         claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries)
                          for s in streams]
        self.group = group
        self.consumer = consumer
        self._concurrency = concurrency
        self._block_ms = block_ms
        self._claim_idle_ms = claim_idle_ms
        self._next_reclaim = 0.0

    async def ensure_groups(self) -> None:
        for c in self.consumers:
            await c.ensure_group()

    async def _reclaim_one(self) -> tuple[StreamConsumer, StreamMessage, dict[Any, Any]] | None:
        for c in self.consumers:
            start = "0-0"
            for _ in range(8):  # skip past entries deleted from the stream, a few pages at most
                result = await self._redis.xautoclaim(c.stream, self.group, self.consumer, self._claim_idle_ms,
                                                      start_id=start, count=1)
                start, messages = result[0], result[1]
                for msg_id, fields in messages:
                    if fields is not None:
                        return c, _decode(msg_id, fields, await c._deliveries(msg_id)), fields
                if start in (b"0-0", "0-0"):
                    break
        return None

    async def _read_one(self, streams: list[StreamConsumer], block_ms: int | None) -> (
            tuple[StreamConsumer, StreamMessage, dict[Any, Any]] | None):
        by_key = {c.stream: c for c in streams}
        result = await self._redis.xreadgroup(self.group, self.consumer, {c.stream: ">" for c in streams},
                                              count=1, block=block_ms)
        for stream, messages in result or []:
            name = stream.decode() if isinstance(stream, bytes) else stream
            for msg_id, fields in messages:
                return by_key[name], _decode(msg_id, fields), fields
        return None

    async def next(self) -> tuple[StreamConsumer, StreamMessage, dict[Any, Any]] | None:
        """The next message this member should handle, or None after block_ms without one."""
        if time.monotonic() >= self._next_reclaim:
            found = await self._reclaim_one()
            if found is not None:
                return found
            self._next_reclaim = time.monotonic() + self._claim_idle_ms / 4000
        for c in self.consumers:
            found = await self._read_one([c], None)  # no BLOCK: answers at once
            if found is not None:
                return found
        return await self._read_one(self.consumers, self._block_ms)

    async def _renew(self, c: StreamConsumer, msg_id: str) -> None:
        while True:
            await asyncio.sleep(self._claim_idle_ms / 3000)
            try:
                await c.touch(msg_id)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("claim not renewed", stream=c.stream, message_id=msg_id, error=str(exc))

    async def handle(self, c: StreamConsumer, msg: StreamMessage, fields: dict[Any, Any]) -> bool:
        renew = asyncio.create_task(self._renew(c, msg.id))
        try:
            return await c._handle(msg, fields)
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renew

    async def _slot(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                found = await self.next()
                if found is not None:
                    await self.handle(*found)
            except asyncio.CancelledError:
                raise
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("redis unavailable, retrying", group=self.group, error=str(exc))
                await asyncio.sleep(1)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume with `concurrency` slots until `stop` is set."""
        await self.ensure_groups()
        slots = [asyncio.create_task(self._slot(stop)) for _ in range(self._concurrency)]
        try:
            await asyncio.gather(*slots)
        finally:
            for t in slots:
                t.cancel()
            await asyncio.gather(*slots, return_exceptions=True)


BatchHandler = Callable[[list[StreamMessage]], Awaitable[None]]


class BatchStreamConsumer(StreamConsumer):
    """A consumer whose handler takes everything one read returns (e.g. one database transaction per batch) and
    acks it together. When a batch fails, its messages are retried one by one, so that a poisonous message still
    ends in the dead letters alone after `max_deliveries` and the rest of its batch goes through."""

    def __init__(self, client: redis.Redis, prefix: str, stream: str, group: str, consumer: str,
                 handler: BatchHandler, **kwargs: Any) -> None:
        super().__init__(client, prefix, stream, group, consumer, lambda m: handler([m]), **kwargs)
        self._batch_handler = handler

    async def read_new(self, block_ms: int | None = None) -> int:
        result = await self._redis.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self._batch,
            block=self._block_ms if block_ms is None else block_ms,
        )
        raw = [(msg_id, fields) for _stream, messages in result or [] for msg_id, fields in messages]
        if not raw:
            return 0
        batch = [_decode(msg_id, fields) for msg_id, fields in raw]
        try:
            await self._batch_handler(batch)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("stream batch failed, retrying its messages one by one", stream=self.stream,
                          messages=len(batch))
            return sum([await self._handle(m, fields) for m, (_id, fields) in zip(batch, raw, strict=True)])
        await self._redis.xack(self.stream, self.group, *[m.id for m in batch])
        return len(batch)


def decode_entry(msg_id: Any, fields: dict[Any, Any]) -> StreamMessage:
    """A raw stream entry (as XRANGE returns it) as a StreamMessage, e.g. to replay a stream outside a group."""
    return _decode(msg_id, fields)
