"""The engine on the real converted model (SmolLM2-135M-Instruct int8, the onnxruntime-genai builder's graph).

The model directory comes from LLMLAB_MODEL_DIR, else the importer's cache (`make model`). Without a model the tests
skip, unless LLMLAB_REQUIRE_MODEL=1 (set by `make test`), which makes a missing model a failure.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import AsyncIterator

import numpy as np
import onnxruntime as ort
import pytest

from services.inference.artifacts import default_cache_dir
from services.inference.domain import GenerationRequest, SamplingParams
from services.inference.engine import Engine, EngineConfig, collect

QUESTIONS = [
    "What is the capital of France? Answer in one sentence.",
    "Name three colors of the rainbow.",
    "Write one sentence about the sea.",
    "What is two plus two?",
]


def model_dir() -> pathlib.Path:
    value = os.environ.get("LLMLAB_MODEL_DIR", "")
    path = pathlib.Path(value) if value else default_cache_dir() / "smollm2-135m-instruct"
    if path is None or not (path / "model.onnx").exists():
        message = f"no converted model (LLMLAB_MODEL_DIR={value!r})"
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
async def engine() -> AsyncIterator[Engine]:
    engine = Engine.from_dir(model_dir(), EngineConfig(max_batch=8, threads=os.cpu_count()))
    await engine.start()
    yield engine
    await engine.stop()


def chat(engine: Engine, text: str, **params: object) -> GenerationRequest:
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": text}])
    return GenerationRequest(f"real-{abs(hash((text, str(params))))}", ids, SamplingParams(**params))  # type: ignore[arg-type]


async def test_chat_answer_is_coherent(engine: Engine) -> None:
    out = await collect(engine.generate(chat(engine, QUESTIONS[0], temperature=0.0, max_tokens=48)))
    assert "Paris" in out.text
    assert out.finish_reason == "stop"  # the model closed its turn with <|im_end|>
    assert out.usage is not None and out.usage.completion_tokens == len(out.token_ids)
    assert out.token_ids[-1] in engine.eos_token_ids and "<|im_end|>" not in out.text


async def test_greedy_batch_of_four_equals_each_alone(engine: Engine) -> None:
    reqs = [chat(engine, q, temperature=0.0, max_tokens=40) for q in QUESTIONS]
    alone = [await collect(engine.generate(r)) for r in reqs]
    together = await asyncio.gather(*(collect(engine.generate(r)) for r in reqs))
    for a, b in zip(alone, together, strict=True):
        assert a.token_ids == b.token_ids
        assert a.text == b.text


async def test_streaming_concatenation_equals_the_full_text(engine: Engine) -> None:
    req = chat(
        engine, "Write a short poem about autumn leaves, with one emoji 🍂.", temperature=0.8, seed=5, max_tokens=60
    )
    events = [e async for e in engine.generate(req)]
    streamed = "".join(e.text for e in events)
    merged = await collect(engine.generate(req))  # same seed, same text
    assert streamed == merged.text
    ids = [t for e in events for t in e.token_ids if t not in engine.eos_token_ids]
    assert streamed == engine.tokenizer.decode(ids)
    assert len(events) == len(ids) + (events[-1].token_ids[-1] in engine.eos_token_ids)


async def test_seeded_sampling_is_reproducible_alongside_other_requests(engine: Engine) -> None:
    params = {"temperature": 0.9, "top_p": 0.95, "seed": 42, "max_tokens": 40}
    alone = await collect(engine.generate(chat(engine, QUESTIONS[2], **params)))
    busy = await asyncio.gather(
        collect(engine.generate(chat(engine, QUESTIONS[1], temperature=0.0, max_tokens=30))),
        collect(engine.generate(chat(engine, QUESTIONS[2], **params))),
        collect(engine.generate(chat(engine, QUESTIONS[3], temperature=1.0, seed=1, max_tokens=20))),
    )
    assert busy[1].text == alone.text


async def test_long_prompt_chunked_prefill_matches_one_shot(engine: Engine) -> None:
    text = (
        "Here is a list of facts. "
        + "The sky is blue. Grass is green. Snow is white. " * 20
        + "Question: what color is snow? Answer in one word."
    )
    one_shot = await collect(engine.generate(chat(engine, text, temperature=0.0, max_tokens=16)))
    chunked = Engine(engine.artifact, EngineConfig(max_batch=2, prefill_tokens=64))
    await chunked.start()
    try:
        out = await collect(chunked.generate(chat(engine, text, temperature=0.0, max_tokens=16)))
    finally:
        await chunked.stop()
    assert out.token_ids == one_shot.token_ids
    assert any(color in out.text.lower() for color in ("white", "green", "blue"))  # on topic, if not always right


def direct_logprobs(engine: Engine, tokens: list[int]) -> np.ndarray:
    """log-softmax of one plain full-logits forward pass of the model as built (no KV cache reuse, no chunks)."""
    graph = engine.artifact.graph
    session = ort.InferenceSession(str(engine.artifact.path / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([tokens], np.int64), "attention_mask": np.ones((1, len(tokens)), np.int64)}
    for name in graph.past_key_names + graph.past_value_names:
        feeds[name] = np.zeros((1, graph.num_kv_heads, 0, graph.head_size), np.float32)
    logits = session.run(["logits"], feeds)[0][0, :-1, : engine.tokenizer.vocab_size].astype(np.float64)
    peak = logits.max(axis=1, keepdims=True)
    return logits - (peak + np.log(np.exp(logits - peak).sum(axis=1, keepdims=True)))


async def test_prompt_logprobs_equal_a_direct_full_logits_pass(engine: Engine) -> None:
    text = "The capital of France is Paris. The capital of Germany is Berlin. Snow is white and grass is green. " * 6
    tokens = engine.tokenizer.encode(text)
    expected = direct_logprobs(engine, tokens)
    chunked = Engine(engine.artifact, EngineConfig(max_batch=2, prefill_tokens=48, warmup=False))
    await chunked.start()
    try:
        for scorer in (engine, chunked):  # one pass, and chunks of 48 over a KV buffer
            scored = await scorer.score(tokens, top_logprobs=3)
            assert [s.token_id for s in scored] == tokens[1:]
            got = np.array([s.logprob for s in scored])
            want = expected[np.arange(len(tokens) - 1), tokens[1:]]
            assert np.abs(got - want).max() < 1e-3
            for i in (0, len(scored) // 2, len(scored) - 1):
                best = np.argsort(-expected[i], kind="stable")[:3]
                assert [t for t, _ in scored[i].top] == best.tolist()
                assert np.allclose([lp for _, lp in scored[i].top], expected[i, best], atol=1e-3)
                assert scored[i].greedy == (best[0] == tokens[i + 1])
    finally:
        await chunked.stop()


async def test_scoring_between_decode_steps_leaves_generation_unchanged(engine: Engine) -> None:
    req = chat(engine, QUESTIONS[1], temperature=0.0, max_tokens=40)
    alone = await collect(engine.generate(req))
    tokens = engine.tokenizer.encode("A sentence to score while another request decodes.")
    busy, scored = await asyncio.gather(collect(engine.generate(req)), engine.score(tokens))
    assert busy.token_ids == alone.token_ids and len(scored) == len(tokens) - 1


async def test_shared_system_prompt_is_served_from_the_prefix_cache(engine: Engine) -> None:
    system = "You are a careful assistant who answers briefly and precisely. " * 6
    off = Engine(engine.artifact, EngineConfig(max_batch=4, prefix_cache=False, warmup=False))
    await off.start()
    try:
        for question in QUESTIONS:
            ids = engine.tokenizer.encode_chat([{"role": "system", "content": system},
                                                {"role": "user", "content": question}])
            before = engine.stats().cache
            req = GenerationRequest(f"sys-{question}", ids, SamplingParams(temperature=0.0, max_tokens=24))
            cached = await collect(engine.generate(req))
            plain = await collect(off.generate(req))
            assert cached.token_ids == plain.token_ids
            after = engine.stats().cache
            assert before is not None and after is not None
            if question != QUESTIONS[0]:
                assert after.hit_tokens - before.hit_tokens >= 64
    finally:
        await off.stop()
