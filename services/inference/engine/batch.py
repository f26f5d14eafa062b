"""The batch the engine runs: the plan of each step (on the event loop) and the steps themselves (prefill, chunked
prefill, decode; in the worker thread), with the rendering of each step's events. A sequence's state is in
sequence.py, the thread that renders a step while the next runs in render_thread.py.

engine.py describes the scheduling; this module is its mechanics.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..domain import INTERACTIVE, GenerationEvent, TokenLogprob, TopLogprob, Usage
from .constraint import TokenConstraint
from .prefix_cache import PrefixCache
from .render_thread import RenderThread
from .runner import ModelRunner
from .sampling import SampledToken, sample_batch
from .sequence import SequenceState, Step
from .tokenizer import ModelTokenizer

if TYPE_CHECKING:
    from .engine import EngineConfig

log = logging.getLogger(__name__)

RATE_WINDOW_S = 10.0
_RATE_SAMPLE_S = 0.25


class BatchCore:
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
        self.decoding: list[SequenceState] = []  # decoding[i].slot == i
        self.staged: SequenceState | None = None  # a long prompt being prefilled in the staging slot
        self._turn = 0
        self._last = ""
        self._decode_ms: float | None = None  # moving averages of a decode step and of one prompt token's prefill
        self._token_ms: float | None = None
        self.steps = 0
        self.tokens_generated = 0
        self.requests_finished = 0
        # (time, tokens generated so far), sampled a few times a second over the rate window, for stats()
        self.rate: collections.deque[tuple[float, int]] = collections.deque(
            [(time.perf_counter(), 0)], maxlen=int(RATE_WINDOW_S / _RATE_SAMPLE_S) + 1
        )
        self._lock = threading.Lock()
        self._helper: RenderThread | None = None
        self.last_interactive = -1e9  # monotonic time of the last interactive submission (engine.py "Priority")

    def close(self) -> None:
        if self._helper is not None:
            self._helper.close()
            self._helper = None

    @property
    def active(self) -> int:
        return len(self.decoding) + (self.staged is not None)

    # -- priority (engine.py "Priority") -----------------------------------------------------------------------------

    def batch_cap(self) -> int:
        """Slots batch-class sequences may hold now: all, unless interactive requests arrived recently."""
        reserved = self.config.batch_reserved_slots
        if reserved <= 0 or time.monotonic() - self.last_interactive > self.config.interactive_window_s:
            return self.config.max_batch
        return max(1, self.config.max_batch - reserved)

    def batch_running(self) -> int:
        running = [s for s in self.decoding if s.request.priority != INTERACTIVE]
        return len(running) + (self.staged is not None and self.staged.request.priority != INTERACTIVE)

    def may_admit(self, waiting: collections.deque[SequenceState]) -> bool:
        """Whether the head of the queue could take a slot now (read from the worker thread: no iteration)."""
        try:
            head = waiting[0]
        except IndexError:
            return False
        return head.request.priority == INTERACTIVE or self.batch_running() < self.batch_cap()

    # -- planning (event loop) ---------------------------------------------------------------------------------------

    def plan(self, waiting: collections.deque[SequenceState]) -> Step | None:
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
        options: dict[str, list[SequenceState]] = {}
        if free > 0 and waiting:
            group = self._admissible(waiting, free, chunk)
            if group:
                options["prefill"] = group
            if self.staged is None:
                cap = self.batch_running() < self.batch_cap()
                long = next((s for s in waiting if self._uncached(s) > chunk
                             and (cap or s.request.priority == INTERACTIVE)), None)
                if long is not None:
                    options["chunk"] = [long]
        if self.staged is not None:
            options["chunk"] = []
        if self.decoding:
            options["decode"] = []
        if not options:
            return Step("reap") if reap else None
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
        return Step(kind, options[kind], tokens=chunk)

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

    def _uncached(self, seq: SequenceState) -> int:
        return len(seq.prompt) - (self.cache.peek(seq.prompt) if self.cache is not None else 0)

    def _admissible(self, waiting: collections.deque[SequenceState], free: int, chunk: int) -> list[SequenceState]:
        """The waiting requests one prefill step takes, in order, within `chunk` computed tokens: a prompt equal to
        one already taken costs nothing (it is prefilled once and copied), a cached prefix costs nothing, uncached
        prompts are padded to the longest. A prompt whose uncached part is longer than `chunk` is left to
        chunked prefill."""
        group: list[SequenceState] = []
        seen: set[tuple[int, ...]] = set()
        padded = width = cached_cost = 0
        batch_free = self.batch_cap() - self.batch_running()  # engine.py "Priority"
        for seq in waiting:
            if len(group) >= free:
                break
            batch = seq.request.priority != INTERACTIVE
            if batch and batch_free <= 0:
                break  # interactive requests queue ahead of batch ones: none follows
            key = tuple(seq.prompt) if self.config.share_prefill else (id(seq),)
            if key in seen:
                group.append(seq)
                batch_free -= batch
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
            batch_free -= batch
        return group

    # -- steps (worker thread) ---------------------------------------------------------------------------------------

    def execute(
        self,
        plan: Step,
        emit: Callable[[list[tuple[SequenceState, GenerationEvent]]], None],
        interrupted: Callable[[int], bool],
    ) -> list[tuple[SequenceState, GenerationEvent]]:
        """Run the planned step and return its events.

        A decode step repeats here, handing each step's events to `emit`, for as long as the batch runs undisturbed
        (`interrupted(active)` is false: nothing waits for a free slot, no long prompt is half prefilled, no stop).
        Going back to the event loop between such steps would only add its latency to every token.
        """
        events: list[tuple[SequenceState, GenerationEvent]] = []
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
        events: list[tuple[SequenceState, GenerationEvent]],
        exc: BaseException,
        reason: str = "error",
        extra: Iterable[SequenceState] = (),
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

    def _reap(self, events: list[tuple[SequenceState, GenerationEvent]]) -> None:
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

    def _prefill(self, admitted: list[SequenceState], events: list[tuple[SequenceState, GenerationEvent]]) -> None:
        """Prefill admitted prompts: each distinct prompt once (uncached ones in one padded batch, cached ones by
        their suffixes after the cached prefix), copied into the slots of equal prompts (n choices, a sweep's
        repeats), which then decode in the same batch."""
        seqs = self._drop_cancelled(admitted, events)
        if not seqs:
            return
        leaders: dict[tuple[int, ...], SequenceState] = {}
        copies: list[SequenceState] = []
        def key(seq: SequenceState) -> tuple[int, ...]:
            return tuple(seq.prompt) if self.config.share_prefill else (id(seq),)

        for seq in seqs:
            if leaders.setdefault(key(seq), seq) is not seq:
                copies.append(seq)
                self._release(seq)
        plain = [s for s in leaders.values() if s.hit is None or not s.hit.tokens]
        groups: dict[tuple[int, int], list[SequenceState]] = {}
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

    def _release(self, seq: SequenceState) -> None:
        if seq.hit is not None and self.cache is not None:
            self.cache.release(seq.hit)
        seq.hit = None

    def _chunk(
        self, admitted: list[SequenceState], events: list[tuple[SequenceState, GenerationEvent]], tokens: int
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
        out: list[tuple[SequenceState, GenerationEvent]],
        emit: Callable[[list[tuple[SequenceState, GenerationEvent]]], None],
        interrupted: Callable[[int], bool],
    ) -> None:
        """Decode steps, pipelined: the text and events of step t are rendered in a helper thread while step t+1
        runs (the model releases the GIL). Between two model runs only sampling, bookkeeping and input binding
        happen: after each run the CPU caches are cold, and every Python line there costs ten times its usual.

        A stop sequence is only seen when a step is rendered, so a sequence that stopped on one keeps its row in
        the step already running; that row's output is dropped.
        """
        if self._helper is None:
            self._helper = RenderThread()
        helper = self._helper
        pending: tuple[list[SequenceState], list[SampledToken | BaseException], float] | None = None
        events: list[tuple[SequenceState, GenerationEvent]] = []  # not yet handed out
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
                constrained = [s.constraint for s in seqs if s.constraint is not None]
                helper.prepare(self._render_and_emit, pending, events, emit, constrained)
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
        pending: tuple[list[SequenceState], list[SampledToken | BaseException], float] | None,
        early: list[tuple[SequenceState, GenerationEvent]],
        emit: Callable[[list[tuple[SequenceState, GenerationEvent]]], None],
        constrained: Sequence[TokenConstraint] = (),
    ) -> None:
        events = self._render(*pending) if pending is not None else []
        emit(events + early)
        for constraint in constrained:  # the next token's masks, while the model computes its logits
            try:
                constraint.prepare()
            except Exception:  # raised again, for that sequence alone, when _choose asks for its mask
                pass

    def _drop_cancelled(
        self, seqs: list[SequenceState], events: list[tuple[SequenceState, GenerationEvent]]
    ) -> list[SequenceState]:
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

    def _fail(
        self, seqs: list[SequenceState], exc: BaseException, events: list[tuple[SequenceState, GenerationEvent]]
    ) -> None:
        now = time.perf_counter()
        for seq in seqs:
            if not seq.finished:  # one that a stop sequence ended has had its final event
                seq.finished = True
                events.append((seq, self._final(seq, GenerationEvent(), "error", now, error=_describe(exc))))
        if any(s.slot >= 0 for s in seqs):
            self._compact()

    def _sample(
        self, seqs: list[SequenceState], logits: np.ndarray, events: list[tuple[SequenceState, GenerationEvent]]
    ) -> None:
        """Choose and render one token for each of `seqs` (prefill steps, where nothing runs in parallel)."""
        events.extend(self._render(seqs, *self._choose(seqs, logits)))
        if any(s.finished for s in seqs):
            self._compact()

    def _choose(
        self, seqs: list[SequenceState], logits: np.ndarray
    ) -> tuple[list[SampledToken | BaseException], float]:
        """Sample the next tokens and take them into the sequences; ends those at EOS, a stop token or max_tokens."""
        vocab = self.tokenizer.vocab_size
        if logits.shape[1] > vocab:
            logits[:, vocab:] = -np.inf
        masks: list[np.ndarray | BaseException | None] | None = None
        if any(s.constraint is not None for s in seqs):
            masks = [_mask(s.constraint) for s in seqs]
        results = sample_batch(logits, [s.sampler for s in seqs], masks)
        now = time.perf_counter()
        for i, (seq, result) in enumerate(zip(seqs, results, strict=True)):
            if isinstance(result, BaseException):
                seq.finished = True
                continue
            token = result.token_id
            if seq.constraint is not None and token not in seq.stop_ids:
                try:
                    seq.constraint.advance(token)
                    seq.complete = seq.constraint.done
                except Exception as exc:  # this sequence's grammar failed; the others go on
                    results[i] = exc
                    seq.finished = True
                    continue
            seq.generated.append(token)
            seq.sampler.observe(token)
            seq.next_token = token
            if seq.t_first is None:
                seq.t_first = now
            if token in seq.stop_ids or seq.complete or len(seq.generated) >= seq.params.max_tokens:
                seq.finished = True
        self.steps += 1
        self.tokens_generated += len(seqs)
        if now - self.rate[-1][0] >= _RATE_SAMPLE_S:
            self.rate.append((now, self.tokens_generated))
        return results, now

    def _render(
        self, seqs: list[SequenceState], results: list[SampledToken | BaseException], now: float
    ) -> list[tuple[SequenceState, GenerationEvent]]:
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

    def _event(self, seq: SequenceState, result: SampledToken | BaseException, now: float) -> GenerationEvent:
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
        if seq.finished:  # the grammar is complete, or max_tokens
            event.text += self._drain(seq)
            return self._final(seq, event, "stop" if seq.complete else "length", now)
        return event

    def _drain(self, seq: SequenceState) -> str:
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
        self, seq: SequenceState, event: GenerationEvent, reason: str, now: float, error: str | None = None
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


def _mask(constraint: TokenConstraint | None) -> np.ndarray | BaseException | None:
    """A sequence's mask for sample_batch: None when it is unconstrained, the error when its grammar failed."""
    if constraint is None:
        return None
    try:
        return constraint.mask()
    except Exception as exc:
        return exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
