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


async def test_priority_consumer_reads_higher_priorities_first(redis_client, redis_prefix):
    from llmlab.runtime.streams import PriorityConsumer

    seen: list[tuple[str, int]] = []

    async def handler(msg):
        seen.append((msg.type, msg.data["i"]))

    pub = EventPublisher(redis_client, redis_prefix)
    c = PriorityConsumer(redis_client, redis_prefix, ["q.high", "q.normal", "q.low"], "g", "w1", handler,
                         block_ms=100)
    await c.ensure_groups()
    for i in range(2):  # published low first: the order of arrival must not matter
        await pub.publish("q.low", "low", {"i": i})
        await pub.publish("q.normal", "normal", {"i": i})
    await pub.publish("q.high", "high", {"i": 0})
    while (found := await c.next()) is not None:
        await c.handle(*found)
    assert seen == [("high", 0), ("normal", 0), ("normal", 1), ("low", 0), ("low", 1)]
    for s in ("q.high", "q.normal", "q.low"):
        assert (await redis_client.xpending(f"{redis_prefix}:stream:{s}", "g"))["pending"] == 0


async def test_priority_consumer_renews_a_long_handler_s_claim_and_reclaims_a_dead_member_s(redis_client,
                                                                                             redis_prefix):
    from llmlab.runtime.streams import PriorityConsumer

    slow_started, release = asyncio.Event(), asyncio.Event()
    handled: list[str] = []

    async def slow(msg):
        slow_started.set()
        await release.wait()
        handled.append("slow")

    second = asyncio.Event()

    async def fast(msg):
        handled.append(f"fast:{msg.deliveries}")
        second.set()

    pub = EventPublisher(redis_client, redis_prefix)
    kw = {"block_ms": 50, "claim_idle_ms": 300, "concurrency": 2}
    a = PriorityConsumer(redis_client, redis_prefix, ["jobs"], "g", "a", slow, **kw)
    b = PriorityConsumer(redis_client, redis_prefix, ["jobs"], "g", "b", fast, **kw)
    await a.ensure_groups()
    await pub.publish("jobs", "job", {"i": 1})
    stop = asyncio.Event()
    run_a = asyncio.create_task(a.run(stop))
    await asyncio.wait_for(slow_started.wait(), 5)
    run_b = asyncio.create_task(b.run(stop))
    await asyncio.sleep(1.2)  # four claim-idle periods: a renews its claim, so b never takes the message
    assert handled == []
    release.set()
    await asyncio.sleep(0.2)
    assert handled == ["slow"]
    # A member that dies holding a message loses it to the other after claim_idle_ms.
    run_a.cancel()
    await asyncio.gather(run_a, return_exceptions=True)
    stop.set()  # b pauses, so that the member about to die takes the next message
    await asyncio.wait_for(run_b, 5)
    await pub.publish("jobs", "job", {"i": 2})
    got = await redis_client.xreadgroup("g", "dead", {f"{redis_prefix}:stream:jobs": ">"}, count=1)
    assert got  # delivered to "dead", which never acks it
    stop = asyncio.Event()
    run_b = asyncio.create_task(b.run(stop))
    await asyncio.wait_for(second.wait(), 5)
    stop.set()
    await asyncio.wait_for(run_b, 5)
    assert handled[1] == "fast:2"  # its second delivery: reclaimed from the dead member
