"""The continuous-batching engine on the tiny model: batching, determinism, stops, limits, cancellation, errors."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

import numpy as np
import pytest

from services.inference.domain import GenerationEvent, GenerationRequest, SamplingParams
from services.inference.engine import (
    ContextLengthExceeded,
    Engine,
    EngineOverloaded,
    EngineStopped,
    InvalidRequest,
    ModelArtifact,
    collect,
)

_ids = itertools.count()
TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France",
    "numbers 12345 and symbols #, $",
    "a",
    "tiny words: hello again, goodbye world and more words to make it longer",
]


def request(prompt: list[int], **params: object) -> GenerationRequest:
    return GenerationRequest(f"r{next(_ids)}", list(prompt), SamplingParams(**params))  # type: ignore[arg-type]


def chat(artifact: ModelArtifact, text: str) -> list[int]:
    return artifact.tokenizer.encode_chat([{"role": "user", "content": text}])


async def run(engine: Engine, req: GenerationRequest) -> GenerationEvent:
    return await collect(engine.generate(req))


async def test_greedy_is_deterministic_and_reports_usage(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine()
    prompt = chat(tiny_artifact, TEXTS[0])
    a = await run(engine, request(prompt, temperature=0.0, max_tokens=24, ignore_eos=True))
    b = await run(engine, request(prompt, temperature=0.0, max_tokens=24, ignore_eos=True))
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.finish_reason == "length" and len(a.token_ids) == 24
    assert a.usage is not None and (a.usage.prompt_tokens, a.usage.completion_tokens) == (len(prompt), 24)
    assert a.usage.total_tokens == len(prompt) + 24
    assert a.time_to_first_token_ms is not None and 0 < a.time_to_first_token_ms <= a.latency_ms  # type: ignore[operator]
    assert a.text == tiny_artifact.tokenizer.decode(a.token_ids)


async def test_batched_greedy_equals_each_alone(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=8)
    reqs = [request(chat(tiny_artifact, t), temperature=0.0, max_tokens=20, ignore_eos=True) for t in TEXTS]
    alone = [await run(engine, r) for r in reqs]
    together = await asyncio.gather(*(run(engine, r) for r in reqs))
    assert [x.token_ids for x in together] == [x.token_ids for x in alone]


async def test_seeded_sampling_is_independent_of_the_batch(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=8)
    sampled = {
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "seed": 7,
        "max_tokens": 24,
        "ignore_eos": True,
        "frequency_penalty": 0.2,
        "repetition_penalty": 1.1,
    }
    prompt = chat(tiny_artifact, TEXTS[1])
    alone = await run(engine, request(prompt, **sampled))
    others = [
        request(chat(tiny_artifact, TEXTS[0]), temperature=0.7, seed=1, max_tokens=30, ignore_eos=True),
        request(chat(tiny_artifact, TEXTS[2]), temperature=0.0, max_tokens=5, ignore_eos=True),
        request(chat(tiny_artifact, TEXTS[5]), temperature=1.3, top_p=0.5, max_tokens=40, ignore_eos=True),
    ]
    results = await asyncio.gather(
        run(engine, others[0]), run(engine, request(prompt, **sampled)), run(engine, others[1]), run(engine, others[2])
    )
    assert results[1].token_ids == alone.token_ids
    other_seed = await run(engine, request(prompt, **{**sampled, "seed": 8}))
    assert other_seed.token_ids != alone.token_ids


async def test_requests_join_and_leave_mid_decode(
    make_engine: Callable, tiny_artifact: ModelArtifact, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = await make_engine(max_batch=4)
    moves: list[tuple[int, int, int]] = []
    runner = engine._runner
    original_move = runner.move
    monkeypatch.setattr(runner, "move", lambda s, d, n: (moves.append((s, d, n)), original_move(s, d, n)))
    a = request(chat(tiny_artifact, TEXTS[0]), temperature=0.0, max_tokens=40, ignore_eos=True)
    b = request(chat(tiny_artifact, TEXTS[1]), temperature=0.8, seed=3, max_tokens=30, ignore_eos=True)
    c = request(chat(tiny_artifact, TEXTS[2]), temperature=0.0, max_tokens=6, ignore_eos=True)
    d = request(chat(tiny_artifact, TEXTS[3]), temperature=0.0, max_tokens=25, ignore_eos=True)
    alone = {r.request_id: await run(engine, r) for r in (a, b, c, d)}

    got: dict[str, GenerationEvent] = {}

    async def consume(r: GenerationRequest, joined: asyncio.Event | None = None, after: int = 0) -> None:
        events = []
        async for event in engine.generate(r):
            events.append(event)
            if joined is not None and len(events) == after:
                joined.set()
        got[r.request_id] = await collect(events)

    a_going, b_going = asyncio.Event(), asyncio.Event()
    task_a = asyncio.create_task(consume(a, a_going, after=5))
    await a_going.wait()  # a is decoding; b, c and d join its batch
    task_b = asyncio.create_task(consume(b, b_going, after=3))
    await b_going.wait()
    await asyncio.gather(consume(c), consume(d), task_a, task_b)
    for r in (a, b, c, d):
        assert got[r.request_id].token_ids == alone[r.request_id].token_ids, r.request_id
    # c left early from the middle of the batch: the last slot moved into its hole
    assert any(dst < src for src, dst, _ in moves)
    assert engine.stats().active == 0


async def test_stop_sequence_across_token_boundaries(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine()
    tok = tiny_artifact.tokenizer
    params = {"temperature": 0.0, "max_tokens": 40, "ignore_eos": True}
    found = None
    for text in TEXTS:  # find an output with two adjacent plain-text tokens of 2+ characters
        base = await run(engine, request(chat(tiny_artifact, text), **params))
        pieces = [tok.token_bytes(t).decode("utf-8", "replace") for t in base.token_ids]
        for a, b in itertools.pairwise(pieces):
            if len(a) >= 2 and len(b) >= 2 and (a + b).isascii() and (a + b).isprintable():
                found = (text, base, a[-2:] + b[:2])  # starts inside one token, ends inside the next
                break
        if found:
            break
    assert found is not None
    text, base, stop = found
    expected = base.text[: base.text.find(stop)]
    events = [e async for e in engine.generate(request(chat(tiny_artifact, text), stop=["zzzz", stop], **params))]
    assert "".join(e.text for e in events) == expected
    assert events[-1].finish_reason == "stop"
    streamed = ""
    for e in events:  # nothing emitted was ever part of the stop
        streamed += e.text
        assert expected.startswith(streamed)


async def test_eos_and_stop_token_ids_end_with_stop(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine()
    prompt = chat(tiny_artifact, TEXTS[1])
    base = await run(engine, request(prompt, temperature=0.0, max_tokens=30, ignore_eos=True))
    target = base.token_ids[6]
    first = base.token_ids.index(target)
    out = await run(engine, request(prompt, temperature=0.0, max_tokens=30, ignore_eos=True, stop_token_ids=[target]))
    assert out.finish_reason == "stop"
    assert out.token_ids == base.token_ids[: first + 1]
    assert out.text == tiny_artifact.tokenizer.decode(base.token_ids[:first])
    assert out.usage is not None and out.usage.completion_tokens == first + 1


async def test_max_tokens_gives_length(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine()
    events = [
        e async for e in engine.generate(request(chat(tiny_artifact, "a"), max_tokens=3, ignore_eos=True, seed=1))
    ]
    assert [len(e.token_ids) for e in events] == [1, 1, 1]
    assert [e.finish_reason for e in events] == [None, None, "length"]
    assert events[-1].usage is not None and events[-1].usage.completion_tokens == 3


async def test_streamed_text_equals_full_decode(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    # random weights emit arbitrary bytes: the stream must still concatenate to the full decode, never splitting
    engine = await make_engine()
    for seed in range(3):
        events = [
            e
            async for e in engine.generate(
                request(chat(tiny_artifact, TEXTS[4]), temperature=1.5, seed=seed, max_tokens=40, ignore_eos=True)
            )
        ]
        ids = [t for e in events for t in e.token_ids]
        assert "".join(e.text for e in events) == tiny_artifact.tokenizer.decode(ids)


async def test_logprobs_in_events(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine()
    out = await run(
        engine,
        request(
            chat(tiny_artifact, TEXTS[0]), temperature=0.0, max_tokens=8, ignore_eos=True, logprobs=True, top_logprobs=3
        ),
    )
    assert len(out.logprobs) == 8
    for token_id, lp in zip(out.token_ids, out.logprobs, strict=True):
        assert lp.logprob <= 0 and len(lp.top_logprobs) == 3
        assert lp.top_logprobs[0].logprob == pytest.approx(lp.logprob)  # greedy picks the most likely token
        assert bytes(lp.bytes) == tiny_artifact.tokenizer.token_bytes(token_id)
        assert [t.logprob for t in lp.top_logprobs] == sorted((t.logprob for t in lp.top_logprobs), reverse=True)


async def test_context_overflow_is_refused_before_queuing(make_engine: Callable) -> None:
    engine = await make_engine()
    prompt = list(range(3, 203))
    with pytest.raises(ContextLengthExceeded) as info:
        await anext(engine.generate(request(prompt, max_tokens=100)))
    assert isinstance(info.value, ValueError)
    assert (info.value.prompt_tokens, info.value.max_tokens, info.value.context_length) == (200, 100, 256)
    assert "256" in str(info.value)
    assert engine.stats().queued == 0 and engine.stats().active == 0
    ok = await run(engine, request(prompt, max_tokens=56, ignore_eos=True))
    assert ok.finish_reason == "length"


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": -1.0},
        {"top_p": 0.0},
        {"top_k": -1},
        {"max_tokens": 0},
        {"top_logprobs": 21},
        {"presence_penalty": 3.0},
        {"repetition_penalty": 0.0},
    ],
)
async def test_invalid_parameters(make_engine: Callable, params: dict) -> None:
    engine = await make_engine()
    with pytest.raises(InvalidRequest):
        await anext(engine.generate(request([5, 6], **params)))


async def test_bad_prompts(make_engine: Callable) -> None:
    engine = await make_engine()
    with pytest.raises(InvalidRequest, match="empty"):
        await anext(engine.generate(request([])))
    with pytest.raises(InvalidRequest, match="token ids"):
        await anext(engine.generate(request([5, 10_000])))


def slow_down(engine: Engine, seconds: float = 0.005) -> None:
    """Make every decode step take a few milliseconds, so a stream is still running when the test acts on it."""
    runner = engine._runner
    decode = runner.decode

    def slow(*args: object) -> np.ndarray:
        time.sleep(seconds)
        return decode(*args)

    runner.decode = slow  # type: ignore[method-assign]


async def test_cancellation_frees_the_slot(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=1)
    slow_down(engine)
    prompt = chat(tiny_artifact, TEXTS[0])
    stream = engine.generate(request(prompt, max_tokens=200, ignore_eos=True, seed=1))
    for _ in range(3):
        await anext(stream)
    assert engine.stats().active == 1
    waiting = asyncio.create_task(run(engine, request(prompt, temperature=0.0, max_tokens=5)))
    await asyncio.sleep(0.02)
    assert engine.stats().queued == 1  # the only slot is taken
    await stream.aclose()
    out = await asyncio.wait_for(waiting, 10)
    assert out.finish_reason in ("length", "stop")
    assert engine.stats().active == 0
    assert engine.stats().tokens_generated < 100  # the cancelled stream stopped early


async def test_cancelled_consumer_task_frees_the_slot(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=2)
    slow_down(engine)
    started = asyncio.Event()

    async def consumer() -> None:
        async for _ in engine.generate(request(chat(tiny_artifact, "a"), max_tokens=200, ignore_eos=True)):
            started.set()

    task = asyncio.create_task(consumer())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if engine.stats().active == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().active == 0


async def test_more_requests_than_slots_queue_and_all_finish(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    engine = await make_engine(max_batch=2)
    reqs = [
        request(chat(tiny_artifact, TEXTS[i % len(TEXTS)]), temperature=0.0, max_tokens=5 + i, ignore_eos=True)
        for i in range(9)
    ]
    alone = [await run(engine, r) for r in reqs]
    together = await asyncio.gather(*(run(engine, r) for r in reqs))
    assert [len(x.token_ids) for x in together] == [5 + i for i in range(9)]
    assert [x.token_ids for x in together] == [x.token_ids for x in alone]
    stats = engine.stats()
    assert (stats.active, stats.queued, stats.slots) == (0, 0, 2)


async def test_full_queue_is_overloaded(make_engine: Callable) -> None:
    engine = await make_engine(max_batch=1, max_queue=2)
    streams = [engine.generate(request([5, 6, 7], max_tokens=50, ignore_eos=True)) for _ in range(3)]
    tasks = [asyncio.ensure_future(anext(s)) for s in streams]
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[2], EngineOverloaded) and "max_queue=2" in str(done[2])
    assert all(isinstance(d, GenerationEvent) for d in done[:2])
    for s in streams[:2]:
        await s.aclose()


async def test_long_prompt_is_prefilled_in_chunks_between_decode_steps(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    long_prompt = chat(tiny_artifact, " ".join(TEXTS[:3]))
    assert len(long_prompt) > 40
    whole = await make_engine(prefill_tokens=512)
    # every chunk counted: no prefix cache, and chunks of prefill_tokens even while the short stream decodes
    chunked = await make_engine(prefill_tokens=16, max_batch=3, prefix_cache=False, interleave_ratio=0)
    params = {"temperature": 0.0, "max_tokens": 12, "ignore_eos": True}
    expected = await run(whole, request(long_prompt, **params))
    short = request(chat(tiny_artifact, TEXTS[0]), **{**params, "max_tokens": 30})
    short_alone = await run(whole, short)
    calls: list[str] = []
    runner = chunked._runner

    def spy(name: str) -> Callable:
        method = getattr(runner, name)

        def record(*args: object) -> object:
            long = name == "prefill_chunk" and args[2] == len(long_prompt)
            calls.append(name + (":long" if long else ""))
            return method(*args)

        return record

    for name in ("prefill", "prefill_chunk", "decode"):
        setattr(runner, name, spy(name))
    first = asyncio.Event()

    async def short_stream() -> GenerationEvent:
        events = []
        async for e in chunked.generate(short):
            events.append(e)
            first.set()
        return await collect(events)

    short_task = asyncio.create_task(short_stream())
    await first.wait()
    got = await run(chunked, request(long_prompt, **params))
    assert got.token_ids == expected.token_ids
    assert (await short_task).token_ids == short_alone.token_ids
    chunks = [i for i, c in enumerate(calls) if c == "prefill_chunk:long"]
    assert len(chunks) == -(-len(long_prompt) // 16)
    assert any(calls[i + 1] == "decode" for i in chunks[:-1]), str(calls)  # decode steps ran between the chunks


@pytest.mark.parametrize("backend", ["numpy", "ortvalue"])
async def test_kv_backends_agree(make_engine: Callable, tiny_artifact: ModelArtifact, backend: str) -> None:
    # The device backend (cache in OrtValues, prefill in the slots, Identity-graph slot copies) runs on the CPU too.
    engine = await make_engine(max_batch=3, prefill_tokens=16, kv_backend=backend)
    reference = await make_engine(max_batch=8)
    reqs = [
        request(chat(tiny_artifact, t), temperature=0.0, max_tokens=4 + 3 * i, ignore_eos=True)
        for i, t in enumerate([*TEXTS, " ".join(TEXTS)])
    ]
    alone = [await run(reference, r) for r in reqs]
    together = await asyncio.gather(*(run(engine, r) for r in reqs))
    assert [x.token_ids for x in together] == [x.token_ids for x in alone]


async def test_a_failed_step_fails_only_its_requests(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=4)
    runner = engine._runner
    steady = request(chat(tiny_artifact, TEXTS[0]), temperature=0.0, max_tokens=30, ignore_eos=True)
    expected = await run(engine, steady)
    real_prefill = runner.prefill

    def broken_prefill(start: int, prompts: list[list[int]]) -> np.ndarray:
        if any(len(p) == 3 for p in prompts):
            raise RuntimeError("onnxruntime exploded")
        return real_prefill(start, prompts)

    runner.prefill = broken_prefill  # type: ignore[method-assign]
    first = asyncio.Event()

    async def steady_stream() -> GenerationEvent:
        events = []
        async for e in engine.generate(steady):
            events.append(e)
            first.set()
        return await collect(events)

    task = asyncio.create_task(steady_stream())
    await first.wait()
    failed = await run(engine, request([5, 6, 7], max_tokens=5))
    assert failed.finish_reason == "error" and "onnxruntime exploded" in (failed.error or "")
    assert (await task).token_ids == expected.token_ids

    real_decode = runner.decode
    runner.decode = lambda *a: (_ for _ in ()).throw(RuntimeError("decode exploded"))  # type: ignore[method-assign]
    out = await run(engine, request([5, 6, 7, 8], max_tokens=5, ignore_eos=True))
    assert out.finish_reason == "error" and len(out.token_ids) == 1
    runner.decode = real_decode  # type: ignore[method-assign]
    again = await run(engine, steady)
    assert again.token_ids == expected.token_ids


async def test_stop_cancels_everything_and_refuses_new_work(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    engine = await make_engine(max_batch=1)
    slow_down(engine)
    running = engine.generate(request(chat(tiny_artifact, "a"), max_tokens=200, ignore_eos=True))
    await anext(running)
    queued = asyncio.create_task(run(engine, request([5, 6], max_tokens=10)))
    await asyncio.sleep(0.02)
    await engine.stop()
    final = [e async for e in running][-1]
    assert final.finish_reason == "cancelled"
    assert (await queued).finish_reason == "cancelled"
    with pytest.raises(EngineStopped):
        await anext(engine.generate(request([5, 6])))


async def test_stats_report_load(make_engine: Callable, tiny_artifact: ModelArtifact) -> None:
    engine = await make_engine(max_batch=2)
    await run(engine, request(chat(tiny_artifact, "a"), max_tokens=20, ignore_eos=True))
    stats = engine.stats()
    assert stats.tokens_generated >= 20 and stats.requests_finished >= 1 and stats.steps >= 20
    assert stats.slots == 2 and stats.max_seq_len == 256


async def test_a_crashed_scheduler_step_fails_its_requests_and_the_engine_goes_on(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    engine = await make_engine()
    core = engine._core
    real_execute = core.execute
    crashes = []

    def crash_once(*args: object) -> object:
        if not crashes:
            crashes.append(1)
            raise RuntimeError("scheduler bug")
        return real_execute(*args)

    core.execute = crash_once  # type: ignore[method-assign]
    failed = await asyncio.wait_for(run(engine, request([5, 6, 7], max_tokens=5)), 10)
    assert failed.finish_reason == "error" and "scheduler bug" in (failed.error or "")
    ok = await asyncio.wait_for(run(engine, request([5, 6, 7], max_tokens=5, ignore_eos=True)), 10)
    assert ok.finish_reason == "length"


async def test_stop_sequence_found_late_drops_the_extra_step(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    # The stop string is seen when a step is rendered, while the next step already runs: that step's token for the
    # stopped request is dropped, and the batch carries on with the right tokens for everyone else.
    engine = await make_engine(max_batch=4)
    params = {"temperature": 0.0, "max_tokens": 30, "ignore_eos": True}
    base = await run(engine, request(chat(tiny_artifact, TEXTS[0]), **params))
    other = request(chat(tiny_artifact, TEXTS[1]), **params)
    other_alone = await run(engine, other)
    stop = base.text[8:11]
    assert stop and "\ufffd" not in stop
    stopped, together = await asyncio.gather(
        run(engine, request(chat(tiny_artifact, TEXTS[0]), stop=[stop], **params)), run(engine, other)
    )
    assert stopped.finish_reason == "stop" and stopped.text == base.text[: base.text.find(stop)]
    assert stopped.token_ids == base.token_ids[: len(stopped.token_ids)]
    assert together.token_ids == other_alone.token_ids


async def test_prompts_arriving_while_others_decode_are_admitted_in_short_steps(
    make_engine: Callable, tiny_artifact: ModelArtifact
) -> None:
    """Steady decode under arrivals: each admission step between two decode steps computes at most the interleave
    budget (here its floor of 8 tokens), and decode steps run between them."""
    engine = await make_engine(max_batch=4, prefix_cache=False, interleave_ratio=1e-6, interleave_min_tokens=8)
    params = {"temperature": 0.0, "ignore_eos": True}
    running = request(chat(tiny_artifact, TEXTS[0]), max_tokens=60, **params)
    arriving = [request(chat(tiny_artifact, t), max_tokens=4, **params) for t in (TEXTS[1], TEXTS[5])]
    alone = [await run(engine, r) for r in (running, *arriving)]
    calls: list[tuple[str, int]] = []
    runner = engine._runner
    for name in ("prefill", "prefill_chunk", "decode"):
        method = getattr(runner, name)

        def spy(*args: object, _name: str = name, _method: Callable = method) -> object:
            size = len(args[0]) if _name != "prefill" else max(len(p) for p in args[1])  # type: ignore[arg-type]
            calls.append((_name, size))
            return _method(*args)

        setattr(runner, name, spy)
    first = asyncio.Event()

    async def stream() -> GenerationEvent:
        events = []
        async for e in engine.generate(running):
            events.append(e)
            first.set()
        return await collect(events)

    task = asyncio.create_task(stream())
    await first.wait()
    calls.clear()
    got = await asyncio.gather(*(run(engine, r) for r in arriving))
    assert [g.token_ids for g in [await task, *got]] == [a.token_ids for a in alone]
    admissions = [(n, size) for n, size in calls if n != "decode"]
    assert admissions and all(size <= 8 for _, size in admissions), admissions
    assert sum(size for _, size in admissions) >= sum(len(r.prompt_token_ids) for r in arriving)
    kinds = [n for n, _ in calls]
    assert all(kinds[i + 1] == "decode" for i, k in enumerate(kinds[:-1]) if k != "decode"), kinds
