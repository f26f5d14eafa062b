"""The engine on the real converted model (SmolLM2-135M-Instruct int8, the onnxruntime-genai builder's graph).

The model directory comes from LLMLAB_MODEL_DIR, else the importer's cache (`make model`). Without a model the tests
skip, unless LLMLAB_REQUIRE_MODEL=1 (set by `make test`), which makes a missing model a failure.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
from collections.abc import AsyncIterator

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
