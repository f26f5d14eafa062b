"""The continuous-batching engine: one scheduler task, model steps in a worker thread, per-request sampling.

The scheduler task plans on the event loop (admissions from the wait queue, which kind of step comes next) and runs
the step in a dedicated worker thread: a batched prefill of newly admitted prompts, one chunk of a long prompt's
prefill, or decode steps over every running sequence. Admission steps alternate with decode steps, so arrivals join
the running batch between decode steps without stalling it; while sequences decode, an admission step computes only
as many prompt tokens as cost about `interleave_ratio` decode steps (step times measured as the engine runs), and a
longer prompt is prefilled in chunks of that size, so running streams keep a steady pace under a burst of arrivals.
Decode steps repeat inside the worker for as long as nothing waits for a slot (no trip through the event loop per
token), with each step's text and events rendered in a helper thread while the next step runs. Decoding sequences
occupy KV slots 0..n; when one leaves, the last one moves into its slot, so a decode step always binds one
contiguous slice of the cache.

Prompts share work two ways. Equal prompts admitted in one step (a request's n choices, a sweep's repeats) are
prefilled once and their keys and values copied into the others' slots; they then decode in the same batch. And the
prefix cache (prefix_cache.py: why copies into per-slot buffers rather than paged attention) keeps the blocks of
every prefilled prompt and finished conversation, so a later prompt starting the same way (a system prompt, a
sweep's prompt, a conversation's history) runs only its new tokens through the model.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from llmlab.sampling import BOUNDS, violation

from ..domain import GenerationEvent, GenerationRequest, SamplingParams, TokenLogprob, TopLogprob, Usage
from .artifact import ModelArtifact, load_artifact
from .errors import ContextLengthExceeded, EngineOverloaded, EngineStopped, InvalidRequest
from .prefix_cache import PrefixCache, PrefixCacheStats, PrefixHit
from .runner import ModelRunner, host_buffer
from .sampling import RequestSampler, SampledToken, sample_batch
from .scoring import PromptScorer, ScoredToken
from .tokenizer import IncrementalDetokenizer, ModelTokenizer, StopMatcher

log = logging.getLogger(__name__)

_RATE_WINDOW_S = 10.0
_RATE_SAMPLE_S = 0.25


@dataclass
class EngineConfig:
    """How big the batch, the wait queue and the cache are."""

    max_batch: int = 16  # sequences decoded together (KV slots)
    max_queue: int = 256  # requests waiting for a slot; one more is refused as overloaded
    max_seq_len: int | None = None  # tokens per sequence (prompt + completion); default: the model's context
    # Padded prompt tokens in one batched prefill step. A longer prompt is prefilled alone, this many tokens per step,
    # between decode steps: GroupQueryAttention's scratch grows with chunk x max_seq_len, and others keep streaming.
    prefill_tokens: int = 512
    device: str = "cpu"
    threads: int | None = None  # intra-op threads; default: every core
    kv_backend: str | None = None  # "numpy" (host) or "ortvalue" (device memory); default by device
    warmup: bool = True  # run a full-size prefill and a decode step at start()
    # Automatic prefix caching (prefix_cache.py): computed prompt blocks kept for later requests with the same
    # prefix, within this many MiB of host memory (SmolLM2-135M: 45 KiB per token, so 512 MiB is ~11k tokens).
    prefix_cache: bool = True
    prefix_cache_mb: float = 512.0
    prefix_block_tokens: int = 16
    # While sequences decode, an admission step (a prefill, or a chunk of a longer prompt) runs between two of their
    # decode steps and delays their next token: it computes as many prompt tokens as fit in `interleave_ratio`
    # decode steps (measured as the engine runs), at least `interleave_min_tokens`. 0: no limit but prefill_tokens.
    interleave_ratio: float = 2.0
    interleave_min_tokens: int = 8
    share_prefill: bool = True  # equal prompts admitted in one step are prefilled once (n choices, a sweep's repeats)


@dataclass
class EngineStats:
    """A snapshot of the engine's load."""

    active: int  # sequences holding a slot (decoding or being prefilled)
    queued: int  # requests waiting for a slot
    slots: int  # max_batch
    tokens_per_s: float  # generated tokens per second over the last ten seconds
    tokens_generated: int = 0
    requests_finished: int = 0
    steps: int = 0
    max_seq_len: int = 0
    prompt_tokens: int = 0  # prompt tokens of admitted requests
    prefill_tokens: int = 0  # of those, the ones run through the model (the rest: prefix cache, shared prompts)
    cache: PrefixCacheStats | None = None  # None when prefix caching is off


class _Sequence:
    """One request's state from submission to its final event."""

    def __init__(self, request: GenerationRequest, stop_ids: frozenset[int], detok: IncrementalDetokenizer) -> None:
        self.request = request
        self.params = request.params
        self.prompt = list(request.prompt_token_ids)
        self.sampler = RequestSampler(request.params, self.prompt)
        self.detok = detok
        self.stop = StopMatcher(request.params.stop)
        self.stop_ids = stop_ids
        self.queue: asyncio.Queue[GenerationEvent] = asyncio.Queue()
        self.slot = -1
        self.length = 0  # positions written in the KV cache
        self.prefilled = 0  # prompt tokens cached so far (chunked prefill)
        self.hit: PrefixHit | None = None  # prefix-cache blocks held from admission until copied into the slot
        self.next_token = -1  # the last sampled token, fed at the next decode step
        self.generated: list[int] = []
        self.cancelled = False
        self.finished = False
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None


@dataclass
class _Step:
    kind: str  # "prefill", "chunk", "decode" or "reap"
    admitted: list[_Sequence] = field(default_factory=list)
    tokens: int = 0  # prompt tokens this step may compute


class _BatchCore:
    """The batch state and the steps over it. `plan` runs on the event loop, `execute` in the worker thread; the
    scheduler awaits each step, so the two never run at the same time. Consumers only ever set `cancelled`."""

    def __init__(
        self, runner: ModelRunner, tokenizer: ModelTokenizer, config: EngineConfig, cache: PrefixCache | None = None
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = config
        self.cache = cache
        self.prompt_tokens = 0
        self.prefill_tokens = 0
        self.decoding: list[_Sequence] = []  # decoding[i].slot == i
        self.staged: _Sequence | None = None  # a long prompt being prefilled in the staging slot
        self._turn = 0
        self._last = ""
        self._decode_ms: float | None = None  # moving averages of a decode step and of one prompt token's prefill
        self._token_ms: float | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.requests_finished = 0
        # (time, tokens generated so far), sampled a few times a second over the rate window, for stats()
        self.rate: collections.deque[tuple[float, int]] = collections.deque(
            [(time.perf_counter(), 0)], maxlen=int(_RATE_WINDOW_S / _RATE_SAMPLE_S) + 1
        )
        self._lock = threading.Lock()
        self._helper: _Helper | None = None

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    @property
    def active(self) -> int:
        return len(self.decoding) + (self.staged is not None)

    # -- planning (event loop) ---------------------------------------------------------------------------------------

    def plan(self, waiting: collections.deque[_Sequence]) -> _Step | None:
        """Choose the next step and take the requests it admits off `waiting`; None when there is nothing to do."""
        for seq in [s for s in waiting if s.cancelled]:
            waiting.remove(seq)
            seq.finished = True
            seq.queue.put_nowait(self._final(seq, GenerationEvent(), "cancelled", time.perf_counter()))
        if any(s.cancelled for s in self.decoding) or (self.staged is not None and self.staged.cancelled):
            reap = True
        else:
            reap = False
        free = self.config.max_batch - self.active
        chunk = self.config.prefill_tokens
        if self.decoding and self.config.interleave_ratio > 0:  # running streams wait for this step: keep it short
            chunk = min(chunk, self._interleave_budget())
        options: dict[str, list[_Sequence]] = {}
        if free > 0 and waiting:
            group = self._admissible(waiting, free, chunk)
            if group:
                options["prefill"] = group
            if self.staged is None:
                long = next((s for s in waiting if self._uncached(s) > chunk), None)
                if long is not None:
                    options["chunk"] = [long]
        if self.staged is not None:
            options["chunk"] = []
        if self.decoding:
            options["decode"] = []
        if not options:
            return _Step("reap") if reap else None
        # Admission steps (a prefill, a chunk of a long prompt; these two take turns) alternate with decode steps:
        # a running stream waits at most one bounded admission step between two of its tokens.
        admit = [k for k in ("prefill", "chunk") if k in options]
        if "decode" in options and (self._last != "decode" or not admit):
            kind = "decode"
        else:
            kind = admit[self._turn % len(admit)]
            self._turn += 1
        self._last = kind
        for seq in options[kind]:
            waiting.remove(seq)
            self.prompt_tokens += len(seq.prompt)
            if self.cache is not None and seq.hit is None:
                seq.hit = self.cache.acquire(seq.prompt)
        return _Step(kind, options[kind], tokens=chunk)

    def _interleave_budget(self) -> int:
        """Prompt tokens that cost about `interleave_ratio` decode steps, from the measured step times."""
        floor = self.config.interleave_min_tokens
        if self._decode_ms is None or self._token_ms is None:
            return max(floor, 32)
        return max(floor, int(self.config.interleave_ratio * self._decode_ms / self._token_ms))

    def _timed(self, attr: str, elapsed_s: float, count: int) -> None:
        """Fold one measurement (ms per step or per prompt token) into a moving average."""
        if count <= 0:
            return
        value = elapsed_s * 1000.0 / count
        old = getattr(self, attr)
        setattr(self, attr, value if old is None else 0.8 * old + 0.2 * value)

    def _uncached(self, seq: _Sequence) -> int:
        return len(seq.prompt) - (self.cache.peek(seq.prompt) if self.cache is not None else 0)

    def _admissible(self, waiting: collections.deque[_Sequence], free: int, chunk: int) -> list[_Sequence]:
        """The waiting requests one prefill step takes, in order, within `chunk` computed tokens: a prompt equal to
        one already taken costs nothing (it is prefilled once and copied), a cached prefix costs nothing, uncached
        prompts are padded to the longest. A prompt whose uncached part is longer than `chunk` is left to
        chunked prefill."""
        group: list[_Sequence] = []
        seen: set[tuple[int, ...]] = set()
        padded = width = cached_cost = 0
        for seq in waiting:
            if len(group) >= free:
                break
            key = tuple(seq.prompt) if self.config.share_prefill else (id(seq),)
            if key in seen:
                group.append(seq)
                continue
            cost = self._uncached(seq)
            if 1 < cost < len(seq.prompt):  # a suffix after a cached prefix runs alone: count its run's overhead
                cost = max(cost, self.config.interleave_min_tokens)
            if cost > chunk:
                continue
            if cost == len(seq.prompt):
                wider = max(width, cost)
                if (padded + 1) * wider + cached_cost > chunk:
                    break
                padded, width = padded + 1, wider
            else:
                if padded * width + cached_cost + cost > chunk:
                    break
                cached_cost += cost
            seen.add(key)
            group.append(seq)
        return group

    # -- steps (worker thread) ---------------------------------------------------------------------------------------

    def execute(
        self,
        plan: _Step,
        emit: Callable[[list[tuple[_Sequence, GenerationEvent]]], None],
        interrupted: Callable[[int], bool],
    ) -> list[tuple[_Sequence, GenerationEvent]]:
        """Run the planned step and return its events.

        A decode step repeats here, handing each step's events to `emit`, for as long as the batch runs undisturbed
        (`interrupted(active)` is false: nothing waits for a free slot, no long prompt is half prefilled, no stop).
        Going back to the event loop between such steps would only add its latency to every token.
        """
        events: list[tuple[_Sequence, GenerationEvent]] = []
        try:
            self._reap(events)
            if plan.kind == "prefill":
                self._prefill(plan.admitted, events)
            elif plan.kind == "chunk":
                self._chunk(plan.admitted, events, plan.tokens)
            elif plan.kind == "decode":
                self._decode_loop(events, emit, interrupted)
        except Exception as exc:
            log.exception("engine step failed; failing the sequences in it")
            self.fail_all(events, exc)
        return events

    def fail_all(
        self,
        events: list[tuple[_Sequence, GenerationEvent]],
        exc: BaseException,
        reason: str = "error",
        extra: Iterable[_Sequence] = (),
    ) -> None:
        """End every sequence holding a slot (and `extra` ones) with `reason`; the batch starts empty again."""
        now = time.perf_counter()
        for seq in [*self.decoding, *([self.staged] if self.staged is not None else []), *extra]:
            self._release(seq)
            if not seq.finished:
                seq.finished = True
                events.append((seq, self._final(seq, GenerationEvent(), reason, now, error=_describe(exc))))
        self.decoding = []
        self.staged = None

    def _reap(self, events: list[tuple[_Sequence, GenerationEvent]]) -> None:
        now = time.perf_counter()
        if self.staged is not None and self.staged.cancelled:
            self._release(self.staged)
            self.staged.finished = True
            events.append((self.staged, self._final(self.staged, GenerationEvent(), "cancelled", now)))
            self.staged = None
        cancelled = [s for s in self.decoding if s.cancelled and not s.finished]
        for seq in cancelled:
            seq.finished = True
            events.append((seq, self._final(seq, GenerationEvent(), "cancelled", now)))
        if cancelled:
            self._compact()

    def _compact(self) -> None:
        """Drop finished sequences and fill their slots with the last ones, keeping slots 0..n contiguous."""
        alive = [s for s in self.decoding if not s.finished]
        if self.cache is not None:  # a finished conversation's history, for its next turn
            for seq in self.decoding:
                if seq.finished and seq.slot >= 0:
                    self.runner.cache_slot(seq.slot, (seq.prompt + seq.generated)[: seq.length], self.cache)
        n = len(alive)
        holes = sorted(s.slot for s in self.decoding if s.finished and s.slot < n)
        movers = [s for s in alive if s.slot >= n]
        for hole, seq in zip(holes, movers, strict=True):
            self.runner.move(seq.slot, hole, seq.length)
            seq.slot = hole
        for seq in self.decoding:
            if seq.finished:
                seq.slot = -1
        alive.sort(key=lambda s: s.slot)
        self.decoding = alive

    def _prefill(self, admitted: list[_Sequence], events: list[tuple[_Sequence, GenerationEvent]]) -> None:
        """Prefill admitted prompts: each distinct prompt once (uncached ones in one padded batch, cached ones by
        their suffixes after the cached prefix), copied into the slots of equal prompts (n choices, a sweep's
        repeats), which then decode in the same batch."""
        seqs = self._drop_cancelled(admitted, events)
        if not seqs:
            return
        leaders: dict[tuple[int, ...], _Sequence] = {}
        copies: list[_Sequence] = []
        def key(seq: _Sequence) -> tuple[int, ...]:
            return tuple(seq.prompt) if self.config.share_prefill else (id(seq),)

        for seq in seqs:
            if leaders.setdefault(key(seq), seq) is not seq:
                copies.append(seq)
                self._release(seq)
        plain = [s for s in leaders.values() if s.hit is None or not s.hit.tokens]
        groups: dict[tuple[int, int], list[_Sequence]] = {}
        for seq in leaders.values():
            if seq.hit is not None and seq.hit.tokens:
                groups.setdefault((seq.hit.tokens, len(seq.prompt)), []).append(seq)
        order = plain + [s for g in groups.values() for s in g]
        start = len(self.decoding)
        started = time.perf_counter()
        try:
            # copies: the runner's logits buffer is reused by the next run
            parts = [self.runner.prefill(start, [s.prompt for s in plain]).copy()] if plain else []
            at = start + len(plain)
            for group in groups.values():
                assert self.cache is not None
                hits = [s.hit for s in group if s.hit is not None]
                suffixes = [s.prompt[s.hit.tokens :] for s in group if s.hit is not None]
                parts.append(self.runner.prefill_cached(at, suffixes, hits, self.cache).copy())
                at += len(group)
            logits = np.concatenate(parts) if len(parts) > 1 else parts[0]
            for i, seq in enumerate(order):
                seq.slot = start + i
            index = {id(s): i for i, s in enumerate(order)}
            rows = [index[id(leaders[key(s)])] for s in copies]
            for i, seq in enumerate(copies):
                seq.slot = start + len(order) + i
                self.runner.copy_slot(order[rows[i]].slot, seq.slot, len(seq.prompt))
            if copies:
                logits = np.concatenate([logits, logits[rows]])
            if self.cache is not None:
                for seq in order:
                    self.runner.cache_slot(seq.slot, seq.prompt, self.cache)
        except Exception as exc:
            log.exception("prefill of %d prompts failed", len(seqs))
            for seq in seqs:
                seq.slot = -1
            self._fail(seqs, exc, events)
            return
        finally:
            for seq in seqs:
                self._release(seq)
        computed = sum(len(s.prompt) for s in plain) + sum(len(s.prompt) - k for (k, _), g in groups.items() for s in g)
        self.prefill_tokens += computed
        self._timed("_token_ms", time.perf_counter() - started, computed)
        ordered = order + copies
        for seq in ordered:
            seq.length = seq.prefilled = len(seq.prompt)
        self.decoding.extend(ordered)
        self._sample(ordered, logits, events)

    def _release(self, seq: _Sequence) -> None:
        if seq.hit is not None and self.cache is not None:
            self.cache.release(seq.hit)
        seq.hit = None

    def _chunk(
        self, admitted: list[_Sequence], events: list[tuple[_Sequence, GenerationEvent]], tokens: int
    ) -> None:
        if admitted:
            live = self._drop_cancelled(admitted, events)
            if not live:
                return
            self.staged = seq = live[0]
            self.runner.stage(len(seq.prompt), seq.hit, self.cache)
            seq.prefilled = seq.hit.tokens if seq.hit is not None else 0
        seq = self.staged
        if seq is None:
            return
        size = tokens
        piece = seq.prompt[seq.prefilled : seq.prefilled + size]
        try:
            started = time.perf_counter()
            logits = self.runner.prefill_chunk(piece, seq.prefilled, len(seq.prompt))
            self._timed("_token_ms", time.perf_counter() - started, len(piece))
        except Exception as exc:
            log.exception("chunked prefill failed")
            self.staged = None
            self._release(seq)
            self._fail([seq], exc, events)
            return
        seq.prefilled += len(piece)
        self.prefill_tokens += len(piece)
        if seq.prefilled < len(seq.prompt):
            return
        self.staged = None
        seq.slot = len(self.decoding)
        seq.length = len(seq.prompt)
        self.runner.commit_staged(seq.slot, seq.length)
        if self.cache is not None:
            self.runner.cache_slot(seq.slot, seq.prompt, self.cache)
        self._release(seq)
        self.decoding.append(seq)
        self._sample([seq], logits[None, :], events)

    def _decode_loop(
        self,
        out: list[tuple[_Sequence, GenerationEvent]],
        emit: Callable[[list[tuple[_Sequence, GenerationEvent]]], None],
        interrupted: Callable[[int], bool],
    ) -> None:
        """Decode steps, pipelined: the text and events of step t are rendered in a helper thread while step t+1
        runs (the model releases the GIL). Between two model runs only sampling, bookkeeping and input binding
        happen: after each run the CPU caches are cold, and every Python line there costs ten times its usual.

        A stop sequence is only seen when a step is rendered, so a sequence that stopped on one keeps its row in
        the step already running; that row's output is dropped.
        """
        if self._helper is None:
            self._helper = _Helper()
        helper = self._helper
        pending: tuple[list[_Sequence], list[SampledToken | BaseException], float] | None = None
        events: list[tuple[_Sequence, GenerationEvent]] = []  # not yet handed out
        try:
            first = True
            while True:
                self._reap(events)
                if any(s.finished for s in self.decoding):
                    self._compact()
                if not self.decoding or (not first and (self.staged is not None or interrupted(self.active))):
                    break
                first = False
                seqs = list(self.decoding)
                tokens = np.fromiter((s.next_token for s in seqs), dtype=np.int64, count=len(seqs))
                lengths = np.fromiter((s.length for s in seqs), dtype=np.int64, count=len(seqs))
                helper.prepare(self._render_and_emit, pending, events, emit)
                pending, events = None, []
                try:
                    started = time.perf_counter()
                    logits = self.runner.decode(tokens, lengths, helper.start)
                    self._timed("_decode_ms", time.perf_counter() - started, 1)
                except Exception as exc:
                    helper.finish()
                    log.exception("decode step over %d sequences failed", len(seqs))
                    self._fail(seqs, exc, events)
                    continue
                helper.finish()
                for seq in seqs:
                    seq.length += 1
                live = [s for s in seqs if not s.finished]  # a stop sequence may have ended some at the last render
                if len(live) < len(seqs):
                    logits = logits[[i for i, s in enumerate(seqs) if not s.finished]]
                pending = (live, *self._choose(live, logits))
        finally:
            if pending is not None:
                out.extend(self._render(*pending))
            out.extend(events)

    def _render_and_emit(
        self,
        pending: tuple[list[_Sequence], list[SampledToken | BaseException], float] | None,
        early: list[tuple[_Sequence, GenerationEvent]],
        emit: Callable[[list[tuple[_Sequence, GenerationEvent]]], None],
    ) -> None:
        events = self._render(*pending) if pending is not None else []
        emit(events + early)

    def _drop_cancelled(
        self, seqs: list[_Sequence], events: list[tuple[_Sequence, GenerationEvent]]
    ) -> list[_Sequence]:
        now = time.perf_counter()
        live = []
        for seq in seqs:
            if seq.cancelled:
                self._release(seq)
                seq.finished = True
                events.append((seq, self._final(seq, GenerationEvent(), "cancelled", now)))
            else:
                live.append(seq)
        return live

    def _fail(self, seqs: list[_Sequence], exc: BaseException, events: list[tuple[_Sequence, GenerationEvent]]) -> None:
        now = time.perf_counter()
        for seq in seqs:
            if not seq.finished:  # one that a stop sequence ended has had its final event
                seq.finished = True
                events.append((seq, self._final(seq, GenerationEvent(), "error", now, error=_describe(exc))))
        if any(s.slot >= 0 for s in seqs):
            self._compact()

    def _sample(
        self, seqs: list[_Sequence], logits: np.ndarray, events: list[tuple[_Sequence, GenerationEvent]]
    ) -> None:
        """Choose and render one token for each of `seqs` (prefill steps, where nothing runs in parallel)."""
        events.extend(self._render(seqs, *self._choose(seqs, logits)))
        if any(s.finished for s in seqs):
            self._compact()

    def _choose(self, seqs: list[_Sequence], logits: np.ndarray) -> tuple[list[SampledToken | BaseException], float]:
        """Sample the next tokens and take them into the sequences; ends those at EOS, a stop token or max_tokens."""
        vocab = self.tokenizer.vocab_size
        if logits.shape[1] > vocab:
            logits[:, vocab:] = -np.inf
        results = sample_batch(logits, [s.sampler for s in seqs])
        now = time.perf_counter()
        for seq, result in zip(seqs, results, strict=True):
            if isinstance(result, BaseException):
                seq.finished = True
                continue
            token = result.token_id
            seq.generated.append(token)
            seq.sampler.observe(token)
            seq.next_token = token
            if seq.t_first is None:
                seq.t_first = now
            if token in seq.stop_ids or len(seq.generated) >= seq.params.max_tokens:
                seq.finished = True
        self.steps += 1
        self.tokens_generated += len(seqs)
        if now - self.rate[-1][0] >= _RATE_SAMPLE_S:
            self.rate.append((now, self.tokens_generated))
        return results, now

    def _render(
        self, seqs: list[_Sequence], results: list[SampledToken | BaseException], now: float
    ) -> list[tuple[_Sequence, GenerationEvent]]:
        """The events of chosen tokens: text (held back while it may start a stop sequence), logprobs, finals."""
        events = []
        for seq, result in zip(seqs, results, strict=True):
            try:
                event = self._event(seq, result, now)
            except Exception as exc:  # a broken request fails alone
                seq.finished = True
                event = self._final(seq, GenerationEvent(), "error", now, error=_describe(exc))
            events.append((seq, event))
        return events

    def _event(self, seq: _Sequence, result: SampledToken | BaseException, now: float) -> GenerationEvent:
        if isinstance(result, BaseException):
            return self._final(seq, GenerationEvent(), "error", now, error=_describe(result))
        token = result.token_id
        event = GenerationEvent(token_ids=[token])
        if token in seq.stop_ids:
            event.text = self._drain(seq)
            return self._final(seq, event, "stop", now)
        if result.logprob is not None:
            event.logprobs = [self._logprob(token, result)]
        event.text, stopped = seq.stop.feed(seq.detok.push((token,)))
        if stopped:
            seq.finished = True
            return self._final(seq, event, "stop", now)
        if seq.finished:  # max_tokens
            event.text += self._drain(seq)
            return self._final(seq, event, "length", now)
        return event

    def _drain(self, seq: _Sequence) -> str:
        """Text held back at the end: an incomplete character, or a possible start of a stop sequence."""
        text, stopped = seq.stop.feed(seq.detok.flush())
        return text if stopped else text + seq.stop.flush()

    def _logprob(self, token: int, result: SampledToken) -> TokenLogprob:
        tok = self.tokenizer
        return TokenLogprob(
            token=tok.token_text(token),
            logprob=float(result.logprob if result.logprob is not None else 0.0),
            bytes=list(tok.token_bytes(token)),
            top_logprobs=[
                TopLogprob(token=tok.token_text(t), logprob=lp, bytes=list(tok.token_bytes(t)))
                for t, lp in result.top_logprobs
            ],
        )

    def _final(
        self, seq: _Sequence, event: GenerationEvent, reason: str, now: float, error: str | None = None
    ) -> GenerationEvent:
        event.finish_reason = reason
        event.error = error
        event.usage = Usage(prompt_tokens=len(seq.prompt), completion_tokens=len(seq.generated))
        event.latency_ms = (now - seq.t_submit) * 1000.0
        if seq.t_first is not None:
            event.time_to_first_token_ms = (seq.t_first - seq.t_submit) * 1000.0
        with self._lock:
            self.requests_finished += 1
        return event


class _Helper:
    """The thread that renders a decode step while the next one runs: `prepare` a job, `start` it right before the
    model runs, `finish` waits for it (or runs it in place if it never started). Errors are logged, never raised."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._job: tuple[Callable[..., None], tuple[object, ...]] | None = None
        self._running = False
        self._thread = threading.Thread(target=self._work, name="engine-render", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            _call(*job)
            self._done.put(None)

    def prepare(self, fn: Callable[..., None], *args: object) -> None:
        self._job = (fn, args)

    def start(self) -> None:
        if self._job is not None:
            self._jobs.put(self._job)
            self._job = None
            self._running = True

    def finish(self) -> None:
        if self._running:
            self._done.get()
            self._running = False
        elif self._job is not None:
            job, self._job = self._job, None
            _call(*job)

    def close(self) -> None:
        self.finish()
        self._jobs.put(None)
        self._thread.join()


def _call(fn: Callable[..., None], args: tuple[object, ...]) -> None:
    try:
        fn(*args)
    except Exception:
        log.exception("rendering a decode step failed")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Engine:
    """Continuous batching over one model. Use `start()`, then `generate()` from any number of tasks, then `stop()`.

    `generate` validates a request and raises before it is queued (`InvalidRequest`, `ContextLengthExceeded`,
    `EngineOverloaded`, `EngineStopped`), then yields one event per generated token; the last event carries the
    finish reason, usage and timings. A consumer that stops iterating (aclose, cancellation, a client gone) frees
    the request's slot at the next step.
    """

    def __init__(self, artifact: ModelArtifact, config: EngineConfig | None = None) -> None:
        self.config = config = config or EngineConfig()
        if config.max_batch < 1 or config.max_queue < 0 or config.prefill_tokens < 1:
            raise ValueError("max_batch and prefill_tokens must be positive, max_queue not negative")
        self.artifact = artifact
        self.tokenizer = artifact.tokenizer
        context = artifact.graph.context_length
        self.max_seq_len = min(config.max_seq_len or context, context)
        pad = (
            artifact.tokenizer.token_to_id(artifact.tokenizer.pad_token or "") if artifact.tokenizer.pad_token else None
        )
        self._runner = ModelRunner(
            artifact,
            max_batch=config.max_batch,
            max_len=self.max_seq_len,
            prefill_tokens=config.prefill_tokens,
            kv_backend=config.kv_backend,
            pad_token_id=pad if pad is not None else min(artifact.eos_token_ids, default=0),
        )
        cache = None
        if config.prefix_cache and self._runner.kv.backend == "numpy":
            graph = artifact.graph
            block_bytes = config.prefix_block_tokens * graph.kv_bytes_per_token
            cache = PrefixCache(
                2 * graph.num_layers, graph.num_kv_heads, graph.head_size, np.dtype(graph.kv_dtype),
                block_size=config.prefix_block_tokens,
                capacity=max(1, int(config.prefix_cache_mb * 2**20) // block_bytes),
                allocate=host_buffer,
            )
        self._core = _BatchCore(self._runner, artifact.tokenizer, config, cache)
        self._scorer = PromptScorer(artifact, vocab_size=artifact.tokenizer.vocab_size, chunk=config.prefill_tokens)
        self._scoring = 0  # scoring jobs waiting for the worker; a decode loop yields to them
        self._waiting: collections.deque[_Sequence] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._stopping = False

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], config: EngineConfig | None = None, **load_options) -> Engine:
        """Load a model directory (see `load_artifact`) and build an engine over it."""
        config = config or EngineConfig()
        artifact = load_artifact(path, device=config.device, threads=config.threads, **load_options)
        return cls(artifact, config)

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.artifact.eos_token_ids

    @property
    def running(self) -> bool:
        return self._task is not None and not self._stopping

    async def start(self) -> None:
        """Warm the model up and start scheduling; returns once requests are served at full speed."""
        if self._task is not None or self._executor is not None:
            return
        self._stopping = False
        self._wake = asyncio.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-step")
        if self.config.warmup:
            t = time.perf_counter()
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._executor, self._runner.warmup, self.config.prefill_tokens
                )
            except BaseException:
                self._executor.shutdown(wait=False)
                self._executor = None
                raise
            log.info("engine warmed up in %.0f ms", (time.perf_counter() - t) * 1000)
        self._task = asyncio.create_task(self._schedule(), name="engine-scheduler")

    async def stop(self) -> None:
        """Stop scheduling; every waiting or running request ends with finish_reason "cancelled"."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            events: list[tuple[_Sequence, GenerationEvent]] = []
            self._core.fail_all(events, EngineStopped("engine stopped"), reason="cancelled")
            now = time.perf_counter()
            while self._waiting:
                seq = self._waiting.popleft()
                seq.finished = True
                error = "EngineStopped: engine stopped"
                events.append((seq, self._core._final(seq, GenerationEvent(), "cancelled", now, error=error)))
            for seq, event in events:
                seq.queue.put_nowait(event)
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            self._core.close()

    def stats(self) -> EngineStats:
        core = self._core
        now = time.perf_counter()
        total = core.tokens_generated
        samples = [(t, n) for t, n in list(core.rate) if t >= now - _RATE_WINDOW_S] or [(now, total)]
        since, before = samples[0]
        rate = (total - before) / (now - since) if now - since >= 0.5 else 0.0
        return EngineStats(
            active=core.active,
            queued=len(self._waiting),
            slots=self.config.max_batch,
            tokens_per_s=rate,
            tokens_generated=core.tokens_generated,
            requests_finished=core.requests_finished,
            steps=core.steps,
            max_seq_len=self.max_seq_len,
            prompt_tokens=core.prompt_tokens,
            prefill_tokens=core.prefill_tokens,
            cache=core.cache.stats() if core.cache is not None else None,
        )

    def validate(self, request: GenerationRequest) -> None:
        """Raise `InvalidRequest` / `ContextLengthExceeded` for a request the engine would refuse."""
        p = request.params
        prompt = request.prompt_token_ids
        if not prompt:
            raise InvalidRequest("the prompt is empty")
        vocab = self.tokenizer.vocab_size
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})")
        _check_params(p)
        if len(prompt) + p.max_tokens > self.max_seq_len:
            raise ContextLengthExceeded(len(prompt), p.max_tokens, self.max_seq_len)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream one request's events; raises before queuing when the request cannot be served."""
        seq = self._submit(request)
        try:
            while True:
                event = await seq.queue.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not seq.finished:
                seq.cancelled = True
                self._wake.set()

    async def score(self, token_ids: list[int], top_logprobs: int = 0) -> list[ScoredToken]:
        """The logprob of each of `token_ids[1:]` given the tokens before it (a full-logits forward pass, see
        scoring.py), with the `top_logprobs` most likely tokens at each position. Runs in the engine's worker
        between two steps; running streams pause for its length."""
        if not self.running or self._executor is None:
            raise EngineStopped("the engine is not running")
        if not token_ids:
            raise InvalidRequest("the prompt is empty")
        vocab = self.tokenizer.vocab_size
        if min(token_ids) < 0 or max(token_ids) >= vocab:
            raise InvalidRequest(f"prompt token ids must be in [0, {vocab})")
        if len(token_ids) > self.max_seq_len:
            raise ContextLengthExceeded(len(token_ids), 0, self.max_seq_len)
        if (constraint := violation("top_logprobs", top_logprobs)) is not None:
            raise InvalidRequest(f"top_logprobs {constraint}")
        self._scoring += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, self._scorer.score, list(token_ids), top_logprobs
            )
        finally:
            self._scoring -= 1

    def token_logprob(self, scored: ScoredToken) -> TokenLogprob:
        """A scored prompt position as the API's logprob entry (token text, bytes, alternatives)."""
        return self._core._logprob(scored.token_id, SampledToken(scored.token_id, scored.logprob, scored.top))

    def _submit(self, request: GenerationRequest) -> _Sequence:
        if not self.running:
            raise EngineStopped("the engine is not running")
        self.validate(request)
        if len(self._waiting) >= self.config.max_queue:
            raise EngineOverloaded(len(self._waiting), self.config.max_queue)
        stop_ids = frozenset(request.params.stop_token_ids)
        if not request.params.ignore_eos:
            stop_ids |= self.eos_token_ids
        seq = _Sequence(request, stop_ids, self.tokenizer.detokenizer(request.prompt_token_ids))
        self._waiting.append(seq)
        self._wake.set()
        return seq

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._executor is not None

        def emit(events: list[tuple[_Sequence, GenerationEvent]]) -> None:
            if events:
                loop.call_soon_threadsafe(_dispatch, events)

        def interrupted(active: int) -> bool:
            return self._stopping or self._scoring > 0 or (bool(self._waiting) and active < self.config.max_batch)

        while not self._stopping:
            plan = self._core.plan(self._waiting)
            if plan is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                events = await loop.run_in_executor(self._executor, self._core.execute, plan, emit, interrupted)
            except Exception as exc:  # execute catches its own errors; this guards the scheduler itself
                log.exception("engine step crashed")
                events = []
                self._core.fail_all(events, exc, extra=plan.admitted)
            _dispatch(events)


def _dispatch(events: list[tuple[_Sequence, GenerationEvent]]) -> None:
    for seq, event in events:
        seq.queue.put_nowait(event)


def _check_params(p: SamplingParams) -> None:
    """The shared sampling bounds (llmlab.sampling), as the engine's own refusal: it also serves callers that
    have not validated (bench, tests), and a bad value here would corrupt a whole batch."""
    for name in BOUNDS:
        if hasattr(p, name) and (constraint := violation(name, getattr(p, name))) is not None:
            raise InvalidRequest(f"{name} {constraint}")
    if any(not isinstance(s, str) for s in p.stop):
        raise InvalidRequest("stop sequences must be strings")


async def collect(events: AsyncIterator[GenerationEvent] | Iterable[GenerationEvent]) -> GenerationEvent:
    """Merge a stream into one event: all text, token ids and logprobs, with the final event's fields."""
    merged = GenerationEvent()
    parts: list[str] = []

    def take(event: GenerationEvent) -> None:
        parts.append(event.text)
        merged.token_ids.extend(event.token_ids)
        merged.logprobs.extend(event.logprobs)
        if event.finish_reason is not None:
            merged.finish_reason = event.finish_reason
            merged.usage = event.usage
            merged.time_to_first_token_ms = event.time_to_first_token_ms
            merged.latency_ms = event.latency_ms
            merged.error = event.error

    if hasattr(events, "__aiter__"):
        async for event in events:  # type: ignore[union-attr]
            take(event)
    else:
        for event in events:  # type: ignore[union-attr]
            take(event)
    merged.text = "".join(parts)
    return merged
