"""Per-request logits processing and sampling over one decode step's logits, in numpy.

Order, as in Hugging Face and vLLM: repetition penalty (HF/CTRL: on prompt and output tokens, a positive logit is
divided by the penalty, a negative one multiplied), frequency and presence penalties (OpenAI: on output tokens,
`logit -= count * frequency_penalty + presence_penalty`), temperature (0 = greedy argmax), top_k, top_p (the
smallest set of most likely tokens whose probability reaches top_p, at least one; ties to the lower id), then one
uniform draw from the request's own `numpy.random.Generator`, inverted over the kept tokens in id order.

Cost on a 49k vocabulary: an all-greedy batch is one vectorised argmax; a sampled row is one exp and a block-wise
cumulative sum (~0.07 ms); top_p adds one value sort (~0.3 ms in all, whatever the shape of the distribution; an
argsort would cost 0.6 ms and a stable one 4 ms); top_k uses a partial sort (argpartition).

Logprobs are those of the model's own distribution: log-softmax of the raw logits, before penalties, temperature,
top_k and top_p. That is what OpenAI's API returns (its logprobs do not change with temperature, and at temperature
0 the alternatives still carry their real probabilities) and vLLM's default; a distribution after temperature would
be degenerate at temperature 0.

Determinism: every request's row is processed on its own, from its own logits row and its own generator, with one
uniform draw per sampled token. The model computes each row independently of the rest of the batch (verified on the
builder's int8 graph: bitwise equal logits alone and in a padded batch), so the same seed, parameters and prompt give
the same tokens whatever else shares the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..domain import SamplingParams
from .constraint import apply_mask


@dataclass
class SampledToken:
    """The token chosen for one request at one position, with its logprobs when asked."""

    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class RequestSampler:
    """One request's sampling state: its generator and what the penalties need to know about its tokens."""

    def __init__(self, params: SamplingParams, prompt_ids: Sequence[int], *, seed: int | None = None) -> None:
        self.params = params
        self.temperature = float(params.temperature)
        self.greedy = self.temperature == 0.0 or params.top_k == 1
        self.top_k = int(params.top_k)
        self.top_p = float(params.top_p)
        self.want_logprobs = bool(params.logprobs) or params.top_logprobs > 0
        self.top_logprobs = int(params.top_logprobs)
        chosen = params.seed if seed is None else seed
        # The APIs carry int64 seeds (OpenAI's may be negative); numpy takes non-negative ones: the same 64 bits.
        self.rng = np.random.default_rng(None if chosen is None else chosen % 2**64)
        self._repetition = float(params.repetition_penalty)
        self._frequency = float(params.frequency_penalty)
        self._presence = float(params.presence_penalty)
        self.has_penalties = self._repetition != 1.0 or self._frequency != 0.0 or self._presence != 0.0
        self.plain_greedy = self.greedy and not self.has_penalties and not self.want_logprobs
        self._seen: set[int] = set(int(t) for t in prompt_ids) if self._repetition != 1.0 else set()
        self._seen_ids: np.ndarray | None = None
        self._counts: dict[int, int] = {}
        self._count_ids: np.ndarray | None = None
        self._count_values: np.ndarray | None = None

    def observe(self, token_id: int) -> None:
        """Record a generated token (for the penalties)."""
        if not self.has_penalties:
            return
        if self._repetition != 1.0 and token_id not in self._seen:
            self._seen.add(token_id)
            self._seen_ids = None
        if self._frequency != 0.0 or self._presence != 0.0:
            self._counts[token_id] = self._counts.get(token_id, 0) + 1
            self._count_ids = None

    def apply_penalties(self, row: np.ndarray) -> None:
        """Apply the penalties to one row of logits, in place."""
        if self._repetition != 1.0 and self._seen:
            if self._seen_ids is None:
                self._seen_ids = np.fromiter(self._seen, dtype=np.int64, count=len(self._seen))
            ids = self._seen_ids
            values = row[ids]
            row[ids] = np.where(values > 0, values / self._repetition, values * self._repetition)
        if self._counts:
            if self._count_ids is None:
                self._count_ids = np.fromiter(self._counts.keys(), dtype=np.int64, count=len(self._counts))
                self._count_values = np.fromiter(self._counts.values(), dtype=np.float32, count=len(self._counts))
            assert self._count_values is not None
            row[self._count_ids] -= self._count_values * np.float32(self._frequency) + np.float32(self._presence)

    def choose(self, row: np.ndarray) -> int:
        """Pick a token from a processed row of logits (penalties already applied)."""
        if self.greedy:
            return int(np.argmax(row))
        x = row if self.temperature == 1.0 else row * np.float32(1.0 / self.temperature)
        vocab = x.shape[0]
        if 0 < self.top_k < vocab:
            ids = np.argpartition(x, vocab - self.top_k)[vocab - self.top_k :]
            ids = ids[np.argsort(-x[ids], kind="stable")]
            probs = np.exp(x[ids] - x[ids[0]], dtype=np.float64)
            if self.top_p < 1.0:
                cdf = np.cumsum(probs)
                keep = min(int(np.searchsorted(cdf, self.top_p * cdf[-1], side="left")) + 1, len(ids))
                order = np.argsort(ids[:keep])
                ids, probs = ids[:keep][order], probs[:keep][order]
            else:
                order = np.argsort(ids)
                ids, probs = ids[order], probs[order]
            return int(ids[_crossing(probs, self.rng.random() * probs.sum())])
        weights = np.exp(x - x.max())
        if self.top_p < 1.0:
            ids = _nucleus(weights, self.top_p)
            weights = weights[ids]
            return int(ids[_crossing(weights, self.rng.random() * weights.sum(dtype=np.float64))])
        return _crossing(weights, self.rng.random() * weights.sum(dtype=np.float64))


_BLOCK = 256


def _crossing(weights: np.ndarray, target: float) -> int:
    """The first index where the running sum of non-negative `weights` reaches `target` (inverse CDF).

    Summed per block of 256 first: numpy's cumsum over a whole 49k vocabulary costs far more than the draw needs.
    """
    n = weights.shape[0]
    if n <= _BLOCK:
        return min(int(np.searchsorted(np.cumsum(weights, dtype=np.float64), target, side="left")), n - 1)
    pad = (-n) % _BLOCK
    padded = np.concatenate([weights, np.zeros(pad, weights.dtype)]) if pad else weights
    block_cdf = np.cumsum(padded.reshape(-1, _BLOCK).sum(axis=1, dtype=np.float64))
    j = min(int(np.searchsorted(block_cdf, target, side="left")), block_cdf.shape[0] - 1)
    before = float(block_cdf[j - 1]) if j > 0 else 0.0
    within = np.cumsum(weights[j * _BLOCK : (j + 1) * _BLOCK], dtype=np.float64) + before
    i = min(int(np.searchsorted(within, target, side="left")), within.shape[0] - 1)
    return min(j * _BLOCK + i, n - 1)


def _nucleus(weights: np.ndarray, top_p: float) -> np.ndarray:
    """Ids (ascending) of the smallest set of largest weights holding `top_p` of the mass; ties go to lower ids."""
    ranked = -np.sort(-weights)
    keep = _crossing(ranked, top_p * float(ranked.sum(dtype=np.float64))) + 1
    threshold = ranked[keep - 1]
    above = np.flatnonzero(weights > threshold)
    if above.shape[0] >= keep:
        return above
    ties = np.flatnonzero(weights == threshold)[: keep - above.shape[0]]
    return np.sort(np.concatenate([above, ties]))


def _logsumexp(x: np.ndarray) -> float:
    m = float(x.max())
    return m + float(np.log(np.exp(x - m).sum(dtype=np.float64)))


def _sorted_probs(x: np.ndarray, ids: np.ndarray, lse: float) -> tuple[np.ndarray, np.ndarray]:
    """Candidate ids sorted by descending logit (ties by id), with their probabilities under `lse`."""
    values = x[ids].astype(np.float64)
    order = np.lexsort((ids, -values))
    ids = ids[order]
    return ids, np.exp(values[order] - lse)


def sample_batch(
    logits: np.ndarray,
    samplers: Sequence[RequestSampler],
    masks: Sequence[np.ndarray | BaseException | None] | None = None,
) -> list[SampledToken | BaseException]:
    """Choose the next token of every row of `logits` ([n, vocab], float32, modified in place).

    `masks[i]`, when given, is row i's constrained-decoding mask (constraint.py): tokens outside it are never chosen.
    It applies after the logprobs are taken (they stay the model's own distribution) and before the penalties. A row
    whose processing fails (or whose mask is an exception) yields the exception instead of a token, so one bad
    request never fails the rest.
    """
    n = len(samplers)
    if masks is None and all(s.plain_greedy for s in samplers):
        return [SampledToken(t) for t in logits[:n].argmax(axis=1).tolist()]
    results: list[SampledToken | BaseException] = [None] * n  # type: ignore[list-item]
    for i, sampler in enumerate(samplers):
        mask = masks[i] if masks is not None else None
        if isinstance(mask, BaseException):
            results[i] = mask
            continue
        try:
            row = logits[i]
            if sampler.plain_greedy:
                if mask is not None:
                    apply_mask(row, mask)
                results[i] = SampledToken(int(np.argmax(row)))
                continue
            copy = sampler.want_logprobs and (sampler.has_penalties or mask is not None)
            raw = row.copy() if copy else row
            if mask is not None:
                apply_mask(row, mask)
            lse = _logsumexp(raw) if sampler.want_logprobs else 0.0
            top: list[tuple[int, float]] = []
            if sampler.top_logprobs > 0:
                k = min(sampler.top_logprobs, raw.shape[0])
                ids = np.argpartition(raw, raw.shape[0] - k)[raw.shape[0] - k :]
                ids, _ = _sorted_probs(raw, ids, lse)
                top = [(int(t), float(raw[t]) - lse) for t in ids]
            if sampler.has_penalties:
                sampler.apply_penalties(row)
            token = sampler.choose(row)
            logprob = float(raw[token]) - lse if sampler.want_logprobs else None
            results[i] = SampledToken(token, logprob, top)
        except Exception as exc:  # a NaN row or a bug in one request's processing stays that request's problem
            results[i] = exc
    return results
