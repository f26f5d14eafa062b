"""Logits processing and sampling against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.inference.domain import SamplingParams
from services.inference.engine import RequestSampler, sample_batch


def sampler(prompt: tuple[int, ...] = (), **params: object) -> RequestSampler:
    return RequestSampler(SamplingParams(**params), list(prompt))  # type: ignore[arg-type]


def frequencies(s: RequestSampler, logits: list[float], draws: int) -> np.ndarray:
    row = np.array(logits, np.float32)
    counts = np.zeros(len(logits))
    for _ in range(draws):
        counts[s.choose(row.copy())] += 1
    return counts / draws


def test_greedy_is_argmax() -> None:
    s = sampler(temperature=0.0)
    assert s.choose(np.array([0.1, 2.5, -1.0, 2.4], np.float32)) == 1
    assert sampler(temperature=1.0, top_k=1).choose(np.array([0.1, 2.5, 3.0], np.float32)) == 2


def test_repetition_penalty_hf_semantics() -> None:
    # HF/CTRL: a seen token's positive logit is divided by the penalty, a negative one multiplied; prompt counts.
    s = sampler(prompt=(0, 2), repetition_penalty=2.0, temperature=0.0)
    row = np.array([2.0, 1.9, -1.0, 0.5], np.float32)
    s.apply_penalties(row)
    np.testing.assert_allclose(row, [1.0, 1.9, -2.0, 0.5])
    s.observe(3)
    row = np.array([2.0, 1.9, -1.0, 0.5], np.float32)
    s.apply_penalties(row)
    np.testing.assert_allclose(row, [1.0, 1.9, -2.0, 0.25])
    assert s.choose(row) == 1


def test_frequency_and_presence_penalties_openai_semantics() -> None:
    # OpenAI: logit -= count * frequency_penalty + (count > 0) * presence_penalty, over generated tokens only.
    s = sampler(prompt=(1, 1, 1), frequency_penalty=0.5, presence_penalty=0.3)
    for token in (0, 0, 2):
        s.observe(token)
    row = np.array([2.0, 1.0, 1.0, 1.0], np.float32)
    s.apply_penalties(row)
    np.testing.assert_allclose(row, [2.0 - 1.0 - 0.3, 1.0, 1.0 - 0.5 - 0.3, 1.0], rtol=1e-6)
    negative = sampler(frequency_penalty=-1.0)
    negative.observe(1)
    row = np.zeros(3, np.float32)
    negative.apply_penalties(row)
    np.testing.assert_allclose(row, [0.0, 1.0, 0.0])


def test_temperature_scales_the_distribution() -> None:
    # softmax([1, 0] / 0.5) = [e^2, 1] / (e^2 + 1)
    freq = frequencies(sampler(temperature=0.5, seed=1), [1.0, 0.0], 20000)
    assert freq[0] == pytest.approx(math.exp(2) / (math.exp(2) + 1), abs=0.01)


def test_top_k_keeps_the_k_best_renormalised() -> None:
    freq = frequencies(sampler(top_k=2, seed=2), [2.0, 1.0, 0.0, -1.0], 20000)
    assert freq[2] == freq[3] == 0
    assert freq[0] == pytest.approx(math.e / (math.e + 1), abs=0.01)


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.5, [1.0, 0, 0, 0]), (0.8, [0.625, 0.375, 0, 0]), (0.81, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, expected: list[float]) -> None:
    logits = np.log([0.5, 0.3, 0.15, 0.05]).tolist()
    freq = frequencies(sampler(top_p=top_p, seed=3), logits, 20000)
    np.testing.assert_allclose(freq, expected, atol=0.012)
    assert all(f == 0 for f, e in zip(freq, expected, strict=True) if e == 0)


def test_top_k_then_top_p() -> None:
    # top_k=3 renormalises [0.5, 0.3, 0.15] to [0.526, 0.316, 0.158]; top_p=0.8 then keeps the first two.
    logits = np.log([0.5, 0.3, 0.15, 0.05]).tolist()
    freq = frequencies(sampler(top_k=3, top_p=0.8, seed=4), logits, 20000)
    np.testing.assert_allclose(freq, [0.625, 0.375, 0, 0], atol=0.012)


def reference_nucleus(row: np.ndarray, top_p: float, rng: np.random.Generator) -> int:
    """The textbook algorithm: sort the whole vocabulary, keep the most likely tokens until their mass reaches top_p
    (ties to the lower id), then draw from the kept tokens in id order."""
    x = row.astype(np.float64)
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    order = np.lexsort((np.arange(len(x)), -x))
    keep = min(int(np.searchsorted(np.cumsum(probs[order]), top_p, side="left")) + 1, len(x))
    kept = np.sort(order[:keep])
    cdf = np.cumsum(probs[kept])
    return int(kept[min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="left")), keep - 1)])


@pytest.mark.parametrize("spread", [0.01, 1.0, 8.0])
def test_nucleus_on_a_large_vocabulary_matches_a_full_sort(spread: float) -> None:
    # A flat distribution needs thousands of candidates (the partial sort has to grow), a peaked one a handful.
    vocab = 5000
    base = np.random.default_rng(0).standard_normal(vocab).astype(np.float32) * spread
    for seed in range(40):
        s = sampler(top_p=0.9, seed=seed)
        assert s.choose(base.copy()) == reference_nucleus(base, 0.9, np.random.default_rng(seed))


def test_full_distribution_draw_matches_inverse_cdf() -> None:
    row = np.log(np.array([0.1, 0.2, 0.3, 0.4], np.float32))
    freq = frequencies(sampler(seed=5), row.tolist(), 40000)
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.01)


def test_same_seed_same_draws_and_batch_position_does_not_matter() -> None:
    rng = np.random.default_rng(9)
    rows = rng.standard_normal((30, 200)).astype(np.float32)
    params = {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "seed": 11}
    a, b = sampler(**params), sampler(**params)
    alone = [a.choose(r.copy()) for r in rows]
    together = []
    for r in rows:
        batch = np.stack([rng.standard_normal(200).astype(np.float32), r.copy(), r.copy()])
        out = sample_batch(batch, [sampler(seed=1), b, sampler(temperature=0.0)])
        together.append(out[1].token_id)  # type: ignore[union-attr]
    assert alone == together
    assert alone != [sampler(**{**params, "seed": 12}).choose(r.copy()) for r in rows]


def test_negative_int64_seeds_are_seeds_too() -> None:
    # OpenAI's seed is any int64; numpy's generators take non-negative seeds (found by the fuzz suite: a 500).
    rows = np.random.default_rng(3).standard_normal((10, 50)).astype(np.float32)
    params = {"temperature": 1.0, "seed": -1_096_641_774}
    a, b = sampler(**params), sampler(**params)
    assert [a.choose(r.copy()) for r in rows] == [b.choose(r.copy()) for r in rows]
    assert sampler(temperature=1.0, seed=-(2**63)).choose(rows[0].copy()) is not None


def test_logprobs_are_the_models_distribution() -> None:
    logits = np.array([[2.0, 1.0, 0.0, -1.0]], np.float32)
    expected = logits[0] - np.log(np.exp(logits[0]).sum())
    for params in (
        {"temperature": 0.0},
        {"temperature": 0.3, "seed": 1},
        {"temperature": 0.0, "presence_penalty": 2.0},
    ):
        s = sampler(logprobs=True, top_logprobs=3, **params)
        s.observe(0)
        [result] = sample_batch(logits.copy(), [s])
        assert not isinstance(result, BaseException)
        assert result.logprob == pytest.approx(expected[result.token_id], abs=1e-6)
        assert [t for t, _ in result.top_logprobs] == [0, 1, 2]
        np.testing.assert_allclose([lp for _, lp in result.top_logprobs], expected[:3], atol=1e-6)
    # the presence penalty moved the choice away from token 0, but not the reported probabilities
    assert result.token_id == 1


def test_all_greedy_batch_fast_path() -> None:
    logits = np.array([[0.0, 1.0, 0.5], [3.0, 1.0, 0.5]], np.float32)
    out = sample_batch(logits, [sampler(temperature=0.0), sampler(temperature=0.0)])
    assert [r.token_id for r in out] == [1, 0]  # type: ignore[union-attr]
    assert all(r.logprob is None for r in out)  # type: ignore[union-attr]


def test_a_failing_row_fails_only_its_request() -> None:
    class Broken(RequestSampler):
        def choose(self, row: np.ndarray) -> int:
            raise FloatingPointError("bad row")

    logits = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    out = sample_batch(logits, [Broken(SamplingParams(temperature=0.5), []), sampler(temperature=0.0)])
    assert isinstance(out[0], FloatingPointError)
    assert out[1].token_id == 0  # type: ignore[union-attr]
