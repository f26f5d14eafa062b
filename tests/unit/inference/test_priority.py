"""Engine priority (engine.py "Priority"): live requests queue ahead of batch-class ones, and while live traffic
arrives batch work keeps `batch_reserved_slots` slots free; with none, batch work may fill every slot."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from services.inference.domain import BATCH, INTERACTIVE, GenerationRequest, SamplingParams
from services.inference.engine import Engine, ModelArtifact, collect

_ids = itertools.count()


def request(artifact: ModelArtifact, priority: int, tokens: int = 24) -> GenerationRequest:
    prompt = artifact.tokenizer.encode_chat([{"role": "user", "content": f"hello {next(_ids)}"}])
    return GenerationRequest(f"p{next(_ids)}", prompt, SamplingParams(temperature=0.0, max_tokens=tokens,
                                                                      ignore_eos=True), priority=priority)


async def test_batch_work_fills_every_slot_without_live_traffic(make_engine: Callable,
                                                                tiny_artifact: ModelArtifact) -> None:
    engine: Engine = await make_engine(max_batch=4, batch_reserved_slots=2, warmup=False)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, engine.stats().active)
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(collect(engine.generate(request(tiny_artifact, BATCH, 32))) for _ in range(8)))
    watcher.cancel()
    assert peak == 4


async def test_live_request_overtakes_queued_batch_work(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine: Engine = await make_engine(max_batch=4, batch_reserved_slots=2, warmup=False)
    finished: list[str] = []

    async def run(req: GenerationRequest, label: str) -> None:
        await collect(engine.generate(req))
        finished.append(label)

    # a live request first: from now on batch work may hold at most 4 - 2 = 2 slots
    await run(request(tiny_artifact, INTERACTIVE, 2), "warm")
    peak = 0
    batch = [asyncio.create_task(run(request(tiny_artifact, BATCH, 120), f"batch{i}")) for i in range(8)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while peak == 0 and loop.time() < deadline:  # batch work starts: it holds at most the unreserved slots
        await asyncio.sleep(0.001)
        peak = max(peak, engine.stats().active)
    assert 1 <= peak <= 2
    before = len(finished)
    await run(request(tiny_artifact, INTERACTIVE, 4), "live")
    # the live request took a reserved slot at once: it did not wait for a batch sequence to end (all of them
    # run 120 tokens, so the ones holding slots end together)
    assert len(finished) - 1 - before <= 2, finished
    await asyncio.gather(*batch)
    assert len(finished) == 10
