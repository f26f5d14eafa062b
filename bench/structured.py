"""Constrained decoding's cost in the engine: decode tok/s with and without a JSON-schema constraint, at 1 and 8
concurrent streams, side by side (docs/structured-outputs.md; target: at most 10 % fewer tok/s).

Both sides run the same chat prompt (a request for a JSON list of people), greedy, `--max-new` tokens each. The
unconstrained side ignores EOS; the constrained side's schema (an array of at least 40 {name, age} objects) cannot
be complete before `--max-new` tokens, so every stream writes exactly as many tokens on both sides, and the
constrained one spends them on the mixed structural and string tokens a real schema makes. Rates are over the decode
phase (first token to last, per stream; aggregate: tokens while all streams decode / that time), the median of
`--repeats` rounds, the two sides alternating round by round so that drift in machine load hits both. Also printed:
the first (uncached) compile of the schema and of the openai SDK's schema for a nested Pydantic model, a cached
start, and the constrained work of one 8-row decode step timed piece by piece.
Usage: python -m bench.structured [MODEL_DIR] [--threads 2] [--max-new 128] [--repeats 5] [--streams 1,8]
MODEL_DIR defaults to $LLMLAB_MODEL_DIR, then the importer's cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import numpy as np

from services.inference.artifacts import default_cache_dir
from services.inference.domain import GenerationRequest, Grammar, SamplingParams
from services.inference.engine import Engine, EngineConfig, RequestSampler, sample_batch
from services.inference.engine.constraint import GrammarCompiler
from services.inference.openai.structured import JSON_STYLE

PROMPT = ("Write a JSON array of people, each an object with a name and an age, for example "
          '[{"name": "Ann", "age": 31}, {"name": "Bo", "age": 7}]. Write at least forty people.')
PEOPLE = {
    "type": "array",
    "minItems": 40,
    "items": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    "x-guidance": JSON_STYLE,
}
NESTED = {  # what the openai SDK sends for class Order(BaseModel): id: str; customer: Customer; items: list[Item]; ...
    "$defs": {
        "Address": {"type": "object", "additionalProperties": False, "required": ["street", "city", "zip"],
                    "properties": {"street": {"type": "string"}, "city": {"type": "string"},
                                   "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}},
        "Customer": {"type": "object", "additionalProperties": False, "required": ["name", "email", "address"],
                     "properties": {"name": {"type": "string"}, "email": {"type": "string", "format": "email"},
                                    "address": {"$ref": "#/$defs/Address"}}},
        "Item": {"type": "object", "additionalProperties": False, "required": ["sku", "qty", "price"],
                 "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1},
                                "price": {"type": "number"}}},
    },
    "type": "object", "additionalProperties": False, "required": ["id", "customer", "items", "status"],
    "properties": {"id": {"type": "string"}, "customer": {"$ref": "#/$defs/Customer"},
                   "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
                   "status": {"enum": ["new", "paid", "shipped"]}},
    "x-guidance": JSON_STYLE,
}


async def run_stream(engine: Engine, rid: str, prompt: list[int], params: SamplingParams) -> list[float]:
    stamps: list[float] = []
    async for event in engine.generate(GenerationRequest(rid, prompt, params)):
        stamps.extend([time.perf_counter()] * len(event.token_ids))
        if event.finish_reason is not None:
            assert event.finish_reason == "length", event.finish_reason
    return stamps


async def rate(engine: Engine, prompt: list[int], params: SamplingParams, streams: int, tag: str) -> float:
    """Decode-phase tok/s: one stream's tokens after its first / that time; several: tokens while all decode."""
    results = await asyncio.gather(*(run_stream(engine, f"{tag}-{i}", prompt, params) for i in range(streams)))
    if streams == 1:
        s = results[0]
        return (len(s) - 1) / (s[-1] - s[0])
    start = max(r[0] for r in results)
    end = min(r[-1] for r in results)
    return sum(1 for r in results for t in r if start < t <= end) / (end - start)


def compile_ms(engine: Engine, schema: dict) -> tuple[float, float]:
    """The first compile of `schema` (a fresh compiler: nothing cached but the tokenizer view) and a cached start."""
    tok = engine.tokenizer
    compiler = GrammarCompiler(tok.to_json(), tok.vocab_size, engine.eos_token_ids)
    _ = compiler.tokenizer
    grammar = Grammar("json_schema", json.dumps(schema))
    t = time.perf_counter()
    compiler.constraint(grammar).mask()
    first = (time.perf_counter() - t) * 1000
    t = time.perf_counter()
    compiler.constraint(grammar).mask()
    return first, (time.perf_counter() - t) * 1000


def step_parts(engine: Engine, rows: int = 8) -> dict[str, float]:
    """ms per decode step of the constrained work for `rows` sequences walking a valid answer (random logits):
    the masks (the helper thread, while the model runs), masked sampling against plain sampling, the matchers'
    advance (both on the critical path)."""
    text = ", ".join(f'{{"name": "Person{i}", "age": {i}}}' for i in range(12))
    tokens = engine.tokenizer.encode("[" + text)
    constraints = [engine.grammars.constraint(Grammar("json_schema", json.dumps(PEOPLE))) for _ in range(rows)]
    samplers = [RequestSampler(SamplingParams(temperature=0.0), []) for _ in range(rows)]
    logits = np.random.default_rng(0).standard_normal((rows, engine.tokenizer.vocab_size)).astype(np.float32)
    parts = {"masks": 0.0, "masked sampling": 0.0, "plain sampling": 0.0, "advance": 0.0}
    for token in tokens:
        t0 = time.perf_counter()
        for c in constraints:
            c.prepare()
        t1 = time.perf_counter()
        sample_batch(logits.copy(), samplers, [c.mask() for c in constraints])
        t2 = time.perf_counter()
        sample_batch(logits.copy(), samplers)
        t3 = time.perf_counter()
        for c in constraints:
            c.advance(token)
        t4 = time.perf_counter()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            parts[name] += dt * 1000 / len(tokens)
    return parts


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("LLMLAB_MODEL_DIR") or str(default_cache_dir() / "smollm2-135m-instruct")
    ap.add_argument("model_dir", nargs="?", default=default)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--streams", default="1,8")
    args = ap.parse_args()
    counts = [int(s) for s in args.streams.split(",") if s]

    engine = Engine.from_dir(args.model_dir, EngineConfig(max_batch=max(counts), threads=args.threads,
                                                          prefix_cache=False))
    await engine.start()
    prompt = engine.tokenizer.encode_chat([{"role": "user", "content": PROMPT}])
    free = SamplingParams(temperature=0.0, max_tokens=args.max_new, ignore_eos=True)
    constrained = SamplingParams(temperature=0.0, max_tokens=args.max_new,
                                 grammar=Grammar("json_schema", json.dumps(PEOPLE)))
    try:
        for params in (free, constrained):  # warm-up; compiles and caches the schema
            await run_stream(engine, "warmup", prompt, SamplingParams(**{**params.__dict__, "max_tokens": 8}))
        print(f"model {args.model_dir}  threads {args.threads}  prompt {len(prompt)} tokens  new {args.max_new}  "
              f"repeats {args.repeats} (median)")
        print(f"{'streams':>7}  {'plain tok/s':>11}  {'json-schema tok/s':>17}  {'cost':>6}")
        for n in counts:
            plain, masked = [], []
            for r in range(args.repeats):
                plain.append(await rate(engine, prompt, free, n, f"p{n}-{r}"))
                masked.append(await rate(engine, prompt, constrained, n, f"c{n}-{r}"))
            a, b = statistics.median(plain), statistics.median(masked)
            print(f"{n:>7}  {a:>11.1f}  {b:>17.1f}  {(1 - b / a) * 100:>5.1f}%")
        for name, schema in (("people array", PEOPLE), ("nested order (SDK-style $defs)", NESTED)):
            first, cached = compile_ms(engine, schema)
            print(f"compile {name}: first {first:.1f} ms, cached start {cached:.2f} ms")
        parts = step_parts(engine)
        print("per decode step, 8 constrained rows: " + ", ".join(f"{k} {v:.3f} ms" for k, v in parts.items()))
        print(f"grammar cache: {engine.grammars.stats()}")
    finally:
        await engine.stop()


if __name__ == "__main__":
    asyncio.run(main())
