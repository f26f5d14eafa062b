"""Constrained decoding (engine/constraint.py): masks, matchers, the compile cache, masked sampling, and the engine
enforcing a grammar per sequence inside its batch (the tiny random-weight model: whatever it would write, the output
must still be valid)."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import numpy as np
import pytest

from services.inference.domain import GenerationRequest, Grammar, SamplingParams
from services.inference.engine import Engine, InvalidRequest, RequestSampler, collect, sample_batch
from services.inference.engine.constraint import GrammarCompiler, GrammarError, apply_mask, check_grammar

from .tiny_model import build_tokenizer

SCHEMA = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
        "color": {"enum": ["red", "green", "blue"]},
    },
    "required": ["ok", "n", "color"],
    "additionalProperties": False,
    "x-guidance": {"whitespace_flexible": False},
}
GRAMMAR = Grammar("json_schema", json.dumps(SCHEMA))


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def compiler(tokenizer) -> GrammarCompiler:
    return GrammarCompiler(tokenizer.to_str(), tokenizer.get_vocab_size(), [2], capacity=2)


def allowed(mask: np.ndarray) -> set[int]:
    return {t for t in range(mask.shape[0] * 32) if (int(mask[t // 32]) >> (t % 32)) & 1}


# -- the mask ----------------------------------------------------------------------------------------------------------


def test_apply_mask_keeps_exactly_the_allowed_tokens_and_drops_the_padding() -> None:
    rng = np.random.default_rng(7)
    mask = rng.integers(-(2**31), 2**31, size=4, dtype=np.int64).astype(np.int32)  # 128 tokens
    row = rng.standard_normal(130).astype(np.float32)  # a padded vocabulary: 2 logits past the mask
    before = row.copy()
    apply_mask(row, mask)
    keep = allowed(mask)
    for t in range(130):
        if t in keep:
            assert row[t] == before[t]
        else:
            assert row[t] == -np.inf


def test_constraint_walks_a_json_instance_and_is_done_at_its_end(compiler, tokenizer) -> None:
    c = compiler.constraint(GRAMMAR)
    first = allowed(c.mask())
    assert 2 not in first  # EOS only where the grammar accepts
    assert all(tokenizer.decode([t]).startswith("{") for t in first)
    for token in tokenizer.encode('{"ok":true,"n":42,"color":"blue"}').ids:
        assert token in allowed(c.mask())
        c.advance(token)
    assert c.accepting and c.done
    assert allowed(c.mask()) == {2}


def test_a_refused_token_is_an_error(compiler, tokenizer) -> None:
    c = compiler.constraint(GRAMMAR)
    with pytest.raises(GrammarError):
        c.advance(tokenizer.encode("x").ids[0])


def test_compiled_grammars_are_cached_and_bounded(tokenizer) -> None:
    compiler = GrammarCompiler(tokenizer.to_str(), tokenizer.get_vocab_size(), [2], capacity=2)
    grammars = [Grammar("json_schema", json.dumps({"type": "integer", "maximum": i})) for i in range(3)]
    compiler.constraint(grammars[0])
    compiler.constraint(grammars[0])
    assert compiler.stats() == {"grammars": 1, "hits": 1, "misses": 1}
    compiler.constraint(grammars[1])
    compiler.constraint(grammars[2])  # evicts grammars[0], the least recently used
    assert compiler.stats()["grammars"] == 2
    assert not compiler.cached(grammars[0]) and compiler.cached(grammars[2])
    a, b = compiler.constraint(grammars[2]), compiler.constraint(grammars[2])
    a.advance(tokenizer.encode("1").ids[0])  # copies of the cached matcher do not share state
    assert allowed(b.mask()) != allowed(a.mask())


def test_check_grammar_names_what_is_unsupported() -> None:
    assert check_grammar(GRAMMAR) is None
    message = check_grammar(Grammar("json_schema", json.dumps({"type": "array", "uniqueItems": True})))
    assert message is not None and "uniqueItems" in message
    lenient = {"type": "array", "uniqueItems": True, "x-guidance": {"lenient": True}}
    assert check_grammar(Grammar("json_schema", json.dumps(lenient))) is None
    assert check_grammar(Grammar("json_schema", "[1]")) is not None
    assert check_grammar(Grammar("lark", 'start: "a" undefined_rule')) is not None


# -- masked sampling ---------------------------------------------------------------------------------------------------


def test_sample_batch_never_picks_a_masked_token_and_reports_raw_logprobs() -> None:
    rng = np.random.default_rng(3)
    vocab = 96
    logits = rng.standard_normal((3, vocab)).astype(np.float32) * 3
    mask = np.zeros(3, dtype=np.int32)
    mask[1] = 0b1010  # tokens 33 and 35 only
    raw = logits.copy()
    greedy = RequestSampler(SamplingParams(temperature=0.0), [])
    sampled = RequestSampler(SamplingParams(temperature=1.5, seed=11, logprobs=True), [])
    free = RequestSampler(SamplingParams(temperature=0.0), [])
    results = sample_batch(logits, [greedy, sampled, free], [mask, mask, None])
    assert results[0].token_id == max((33, 35), key=lambda t: raw[0, t])
    assert results[1].token_id in (33, 35)
    lse = float(np.log(np.exp(raw[1].astype(np.float64)).sum()))
    assert results[1].logprob == pytest.approx(float(raw[1, results[1].token_id]) - lse, abs=1e-4)
    assert results[2].token_id == int(np.argmax(raw[2]))  # the unconstrained row is untouched
    for _ in range(200):
        got = sample_batch(raw[1:2].copy(), [sampled], [mask])[0]
        assert got.token_id in (33, 35)


def test_a_failed_mask_fails_its_row_alone() -> None:
    logits = np.zeros((2, 64), dtype=np.float32)
    samplers = [RequestSampler(SamplingParams(temperature=0.0), []) for _ in range(2)]
    results = sample_batch(logits, samplers, [GrammarError("broken"), None])
    assert isinstance(results[0], GrammarError) and results[1].token_id == 0


# -- the engine ---------------------------------------------------------------------------------------------------


def request(engine: Engine, text: str, **params: object) -> GenerationRequest:
    ids = engine.tokenizer.encode_chat([{"role": "user", "content": text}])
    return GenerationRequest(f"c-{abs(hash((text, str(params))))}", ids, SamplingParams(**params))  # type: ignore[arg-type]


async def test_every_constrained_output_is_valid_while_unconstrained_neighbours_are_unaffected(make_engine) -> None:
    engine = await make_engine(max_batch=8, warmup=False)
    free = [request(engine, f"hello world {i}", temperature=0.0, max_tokens=24) for i in range(3)]
    alone = [await collect(engine.generate(r)) for r in free]
    constrained = [request(engine, "hello", temperature=1.0, seed=i, max_tokens=64, grammar=GRAMMAR)
                   for i in range(5)]
    outs = await asyncio.gather(*(collect(engine.generate(r)) for r in [*free, *constrained]))
    for a, b in zip(alone, outs[:3], strict=True):
        assert a.token_ids == b.token_ids  # other requests in the batch see nothing of the grammars
    for out in outs[3:]:
        jsonschema.validate(json.loads(out.text), SCHEMA)
        assert out.finish_reason == "stop"
        assert out.token_ids[-1] not in engine.eos_token_ids  # ended by the grammar, without spending a step on EOS
    stats = engine.stats()  # compiled once, the other four from the cache (also in /metrics)
    assert (stats.grammars_cached, stats.grammar_compiles, stats.grammar_cache_hits) == (1, 1, 4)


async def test_max_tokens_mid_json_is_length_and_streams_the_same_text(make_engine) -> None:
    engine = await make_engine(max_batch=4, warmup=False)
    out = await collect(engine.generate(request(engine, "hi", temperature=0.0, max_tokens=4, grammar=GRAMMAR)))
    assert out.finish_reason == "length" and len(out.token_ids) == 4  # honest: the object is not finished
    assert out.text.startswith('{"')
    with pytest.raises(ValueError):
        json.loads(out.text)


async def test_a_grammar_that_does_not_compile_is_refused_before_queuing(make_engine) -> None:
    engine = await make_engine(max_batch=2, warmup=False)
    bad = Grammar("json_schema", json.dumps({"not": {"type": "string"}}))
    with pytest.raises(InvalidRequest, match="not"):
        await collect(engine.generate(request(engine, "hi", max_tokens=4, grammar=bad)))
