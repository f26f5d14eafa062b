"""Prefix caching and shared prefill on the tiny model: same greedy tokens with the cache on and off, eviction under a
small budget, references released by cancellation, one prefill for equal prompts decoded in one batch."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from collections.abc import Callable

import numpy as np

from services.inference.domain import GenerationEvent, GenerationRequest, SamplingParams
from services.inference.engine import Engine, ModelArtifact, collect
from services.inference.engine.prefix_cache import PrefixCache

_ids = itertools.count()
SYSTEM = "The engine batches requests, streams tokens and stops on stop sequences. " * 3
QUESTIONS = ["hello world", "Paris is the capital of France", "numbers 12345", "hello again"]


def request(prompt: list[int], **params: object) -> GenerationRequest:
    return GenerationRequest(f"p{next(_ids)}", list(prompt), SamplingParams(**params))  # type: ignore[arg-type]


def conversation(artifact: ModelArtifact, question: str) -> list[int]:
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
    return artifact.tokenizer.encode_chat(messages)


async def run(engine: Engine, req: GenerationRequest) -> GenerationEvent:
    return await collect(engine.generate(req))


def cache_of(layers: int = 2, capacity: int = 4, block: int = 4) -> PrefixCache:
    return PrefixCache(layers, 1, 2, np.dtype(np.float32), block_size=block, capacity=capacity,
                       allocate=lambda shape, dtype: np.zeros(shape, dtype))


def kv(tokens: list[int], layers: int = 2) -> list[np.ndarray]:
    """Per-layer [heads=1, len, head=2] values that encode (layer, token, position)."""
    return [np.array([[[layer * 1000 + t, i] for i, t in enumerate(tokens)]], np.float32) for layer in range(layers)]


# -- the block pool ------------------------------------------------------------------------------------------------


def test_blocks_are_found_by_whole_prefix_and_copied_back() -> None:
    cache = cache_of(capacity=8)
    tokens = list(range(10, 23))  # 13 tokens: 3 full blocks
    assert cache.insert(tokens, kv(tokens)) == 3
    hit = cache.acquire(tokens)
    assert hit.tokens == 12 and cache.stats().pinned == 3
    out = [np.zeros((1, 13, 2), np.float32) for _ in range(2)]
    cache.read(hit, out)
    for got, want in zip(out, kv(tokens), strict=True):
        assert np.array_equal(got[:, :12], want[:, :12])
    cache.release(hit)
    assert cache.stats().pinned == 0
    # The last token always stays to compute; a different first block hides everything after it.
    assert cache.acquire(tokens[:12]).tokens == 8
    assert cache.acquire([99, *tokens[1:]]).tokens == 0
    assert cache.peek([*tokens[:4], 0, 0, 0, 0, 1]) == 4


def test_lru_eviction_takes_unreferenced_tails_first_and_never_pinned_blocks() -> None:
    cache = cache_of(capacity=4)
    a, b = [1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9, 8, 8, 8, 8]
    cache.insert(a, kv(a))
    cache.insert(b, kv(b))  # full: 4 blocks
    held = cache.acquire([*a, 0])  # pins a's two blocks and makes them the most recent
    c = [7, 7, 7, 7]
    assert cache.insert(c, kv(c)) == 1  # evicts b's tail (its deepest block) first
    assert cache.stats().evictions == 1
    assert cache.peek([*b, 0]) == 4 and cache.peek([*a, 0]) == 8
    d = [6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4]
    assert cache.insert(d, kv(d)) == 2  # b's head and c go; a stays pinned; the third block finds no room
    assert cache.peek([*a, 0]) == 8 and cache.peek([*b, 0]) == 0
    cache.release(held)
    stats = cache.stats()
    assert (stats.cached, stats.pinned, stats.capacity) == (4, 0, 4)


# -- the engine ----------------------------------------------------------------------------------------------------


async def test_greedy_tokens_are_identical_with_the_cache_on_and_off(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    off = await make_engine(max_batch=4, prefix_cache=False)
    on = await make_engine(max_batch=4)
    prompts = [conversation(tiny_artifact, q) for q in QUESTIONS]
    params = {"temperature": 0.0, "max_tokens": 20, "ignore_eos": True}
    expected = [await run(off, request(p, **params)) for p in prompts]
    sequential = [await run(on, request(p, **params)) for p in prompts]
    concurrent = await asyncio.gather(*(run(on, request(p, **params)) for p in prompts * 2))
    assert [x.token_ids for x in sequential] == [x.token_ids for x in expected]
    assert [x.token_ids for x in concurrent] == [x.token_ids for x in expected * 2]
    stats = on.stats()
    assert stats.cache is not None and stats.cache.hit_tokens >= 3 * (len(SYSTEM) // 8)  # the shared system prompt
    assert stats.prefill_tokens < stats.prompt_tokens // 3
    assert stats.cache.pinned == 0


async def test_a_small_budget_evicts_and_still_answers_the_same(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    off = await make_engine(max_batch=2, prefix_cache=False)
    block_bytes = 16 * tiny_artifact.graph.kv_bytes_per_token
    small = await make_engine(max_batch=2, prefix_cache_mb=5 * block_bytes / 2**20)
    prompts = [conversation(tiny_artifact, q) for q in QUESTIONS] + [
        tiny_artifact.tokenizer.encode_chat([{"role": "user", "content": q * 3}]) for q in QUESTIONS
    ]
    params = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
    for prompt in prompts * 2:
        assert (await run(small, request(prompt, **params))).token_ids == (
            await run(off, request(prompt, **params))
        ).token_ids
    stats = small.stats().cache
    assert stats is not None and stats.capacity == 5 and stats.cached <= 5
    assert stats.evictions > 0 and stats.hit_tokens > 0 and stats.pinned == 0


async def test_cancelling_a_cached_prompt_mid_prefill_releases_its_blocks(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    engine = await make_engine(max_batch=2, prefill_tokens=16)
    prefix = conversation(tiny_artifact, QUESTIONS[0])
    await run(engine, request(prefix, temperature=0.0, max_tokens=2))  # caches the prefix (chunked itself)
    long = prefix + tiny_artifact.tokenizer.encode(" more words to make it longer" * 3)  # 3+ chunks uncached
    runner = engine._runner
    real_chunk = runner.prefill_chunk
    loop = asyncio.get_running_loop()
    chunked = asyncio.Event()
    release = threading.Event()
    pinned: list[int] = []

    def slow_chunk(*args: object) -> np.ndarray:
        stats = engine._core.cache.stats()  # type: ignore[union-attr]
        pinned.append(stats.pinned)
        loop.call_soon_threadsafe(chunked.set)
        release.wait(5)
        return real_chunk(*args)  # type: ignore[arg-type]

    runner.prefill_chunk = slow_chunk  # type: ignore[method-assign]
    stream = engine.generate(request(long, temperature=0.0, max_tokens=5))
    first = asyncio.ensure_future(anext(stream))
    await asyncio.wait([first, asyncio.ensure_future(chunked.wait())], return_when=asyncio.FIRST_COMPLETED)
    assert not first.done()
    first.cancel()  # the client goes while its prompt is being prefilled
    with contextlib.suppress(asyncio.CancelledError):
        await first
    await stream.aclose()
    release.set()
    for _ in range(200):
        if engine.stats().active == 0:
            break
        await asyncio.sleep(0.01)
    stats = engine.stats()
    assert pinned and pinned[0] >= len(prefix) // 16  # the cached prefix was held during the prefill
    assert stats.active == 0 and stats.cache is not None and stats.cache.pinned == 0
    runner.prefill_chunk = real_chunk  # type: ignore[method-assign]
    again = await run(engine, request(long, temperature=0.0, max_tokens=3, ignore_eos=True))
    assert len(again.token_ids) == 3


async def test_equal_prompts_share_one_prefill_and_decode_in_one_batch(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    engine = await make_engine(max_batch=4, prefix_cache=False)
    prompt = conversation(tiny_artifact, QUESTIONS[1])
    choices = [request(prompt, temperature=0.9, seed=7 + i, max_tokens=10, ignore_eos=True) for i in range(4)]
    alone = [await run(engine, c) for c in choices]
    before = engine.stats().prefill_tokens
    batches: list[int] = []
    runner = engine._runner
    real_decode = runner.decode

    def spy(tokens: np.ndarray, *args: object) -> np.ndarray:
        batches.append(len(tokens))
        return real_decode(tokens, *args)  # type: ignore[arg-type]

    runner.decode = spy  # type: ignore[method-assign]
    together = await asyncio.gather(*(run(engine, c) for c in choices))
    assert [x.token_ids for x in together] == [x.token_ids for x in alone]
    assert engine.stats().prefill_tokens - before == len(prompt)
    assert batches and set(batches) == {4}
