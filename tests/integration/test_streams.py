"""Redis Streams helpers against the real Redis: at-least-once delivery, reclaim of stale messages, dead letters."""

import asyncio

from llmlab.runtime.context import request_id_var
from llmlab.runtime.streams import EventPublisher, StreamConsumer


async def test_publish_and_consume_with_ack(redis_client, redis_prefix):
    seen = []

    async def handler(msg):
        seen.append(msg)

    pub = EventPublisher(redis_client, redis_prefix)
    consumer = StreamConsumer(redis_client, redis_prefix, "events", "analytics", "c1", handler, block_ms=100)
    await consumer.ensure_group()
    token = request_id_var.set("req_test")
    try:
        await pub.publish("events", "response.created", {"response_id": 7, "quality": 91.5})
    finally:
        request_id_var.reset(token)
    assert await consumer.read_new() == 1
    assert seen[0].type == "response.created" and seen[0].data == {"response_id": 7, "quality": 91.5}
    assert seen[0].request_id == "req_test"
    pending = await redis_client.xpending(consumer.stream, "analytics")
    assert pending["pending"] == 0


async def test_two_groups_each_get_every_event(redis_client, redis_prefix):
    got = {"a": [], "b": []}
    consumers = [
        StreamConsumer(redis_client, redis_prefix, "ev", g, "c", lambda m, g=g: _append(got[g], m), block_ms=50)
        for g in ("a", "b")
    ]
    for c in consumers:
        await c.ensure_group()
    pub = EventPublisher(redis_client, redis_prefix)
    for i in range(3):
        await pub.publish("ev", "usage.recorded", {"i": i})
    for c in consumers:
        await c.read_new()
    assert [m.data["i"] for m in got["a"]] == [0, 1, 2] == [m.data["i"] for m in got["b"]]


async def _append(target, msg):
    target.append(msg)


async def test_dead_consumer_message_is_reclaimed(redis_client, redis_prefix):
    """A worker that dies mid-job leaves its message pending; another worker takes it over."""

    async def crash(msg):
        raise RuntimeError("worker died")

    done = []

    async def finish(msg):
        done.append(msg)

    pub = EventPublisher(redis_client, redis_prefix)
    dying = StreamConsumer(redis_client, redis_prefix, "jobs", "workers", "w1", crash, block_ms=50, claim_idle_ms=50)
    healthy = StreamConsumer(redis_client, redis_prefix, "jobs", "workers", "w2", finish, block_ms=50, claim_idle_ms=50)
    await dying.ensure_group()
    await pub.publish("jobs", "sweep.run", {"batch_id": 42})
    assert await dying.read_new() == 0
    assert await healthy.read_new() == 0  # nothing new: the message is pending on w1
    await asyncio.sleep(0.1)
    assert await healthy.reclaim() == 1
    assert done[0].data == {"batch_id": 42} and done[0].deliveries == 2
    assert (await redis_client.xpending(healthy.stream, "workers"))["pending"] == 0


async def test_poison_message_goes_to_dead_letter(redis_client, redis_prefix):
    async def always_fail(msg):
        raise ValueError("bad payload")

    pub = EventPublisher(redis_client, redis_prefix)
    c = StreamConsumer(
        redis_client, redis_prefix, "jobs", "g", "w", always_fail, block_ms=50, claim_idle_ms=1, max_deliveries=3
    )
    await c.ensure_group()
    await pub.publish("jobs", "batch.run", {"id": "b1"})
    await c.read_new()
    for _ in range(3):
        await asyncio.sleep(0.01)
        await c.reclaim()
    assert (await redis_client.xpending(c.stream, "g"))["pending"] == 0
    dead = await redis_client.xrange(c.dead_letter)
    assert len(dead) == 1 and dead[0][1][b"failed_group"] == b"g"


async def test_run_loop_stops_on_event(redis_client, redis_prefix):
    seen = []

    async def handler(msg):
        seen.append(msg)

    stop = asyncio.Event()
    c = StreamConsumer(redis_client, redis_prefix, "loop", "g", "w", handler, block_ms=20)
    task = asyncio.create_task(c.run(stop))
    await asyncio.sleep(0.05)
    await EventPublisher(redis_client, redis_prefix).publish("loop", "x", {})
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert len(seen) == 1
