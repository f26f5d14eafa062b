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

Priority: a request is INTERACTIVE (live `/v1` traffic) or BATCH (a line of an OpenAI batch, docs/batches.md). An
interactive request queues ahead of every waiting batch request, and while interactive requests keep arriving
(one within `interactive_window_s`), batch requests hold at most max_batch - batch_reserved_slots slots, so an
arriving live request finds a free slot at the next admission step instead of waiting for a batch sequence to
finish. With no live traffic batch requests may take every slot: the reservation costs throughput only while it
serves someone. Running sequences are never preempted.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import numpy as np

from llmlab.sampling import BOUNDS, violation

from ..domain import INTERACTIVE, GenerationEvent, GenerationRequest, SamplingParams, TokenLogprob
from .artifact import ModelArtifact, load_artifact
from .batch import RATE_WINDOW_S, BatchCore
from .constraint import GrammarCompiler, TokenConstraint, check_grammar
from .errors import ContextLengthExceeded, EngineOverloaded, EngineStopped, InvalidRequest
from .prefix_cache import PrefixCache, PrefixCacheStats
from .runner import ModelRunner, host_buffer
from .sampling import SampledToken
from .scoring import PromptScorer, ScoredToken
from .sequence import SequenceState

log = logging.getLogger(__name__)


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
    interleave_ratio: float = 1.0
    interleave_min_tokens: int = 8
    # Priority (see Engine._submit): while interactive requests have been seen within `interactive_window_s`,
    # batch-class requests may hold at most max_batch - batch_reserved_slots slots; otherwise they may fill all.
    batch_reserved_slots: int = 0
    interactive_window_s: float = 5.0
    share_prefill: bool = True  # equal prompts admitted in one step are prefilled once (n choices, a sweep's repeats)
    grammar_cache: int = 128  # compiled grammars kept for constrained decoding (constraint.py), least recently used out


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
    grammars_cached: int = 0  # compiled grammars held for constrained decoding (constraint.py)
    grammar_compiles: int = 0
    grammar_cache_hits: int = 0


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
        self._core = BatchCore(self._runner, artifact.tokenizer, config, cache)
        self._scorer = PromptScorer(artifact, vocab_size=artifact.tokenizer.vocab_size, chunk=config.prefill_tokens)
        self._scoring = 0  # scoring jobs waiting for the worker; a decode loop yields to them
        self._grammars: GrammarCompiler | None = None  # built at the first constrained request
        self._waiting: collections.deque[SequenceState] = collections.deque()
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
            events: list[tuple[SequenceState, GenerationEvent]] = []
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
        samples = [(t, n) for t, n in list(core.rate) if t >= now - RATE_WINDOW_S] or [(now, total)]
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
            **self._grammar_stats(),
        )

    def _grammar_stats(self) -> dict[str, int]:
        if self._grammars is None:
            return {}
        g = self._grammars.stats()
        return {"grammars_cached": g["grammars"], "grammar_compiles": g["misses"], "grammar_cache_hits": g["hits"]}

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
        if p.grammar is not None and (problem := check_grammar(p.grammar)) is not None:
            raise InvalidRequest(f"invalid grammar: {problem}")
        if len(prompt) + p.max_tokens > self.max_seq_len:
            raise ContextLengthExceeded(len(prompt), p.max_tokens, self.max_seq_len)

    @property
    def grammars(self) -> GrammarCompiler:
        """The grammar compiler over this model's tokenizer, with its cache of compiled grammars."""
        if self._grammars is None:
            self._grammars = GrammarCompiler(
                self.tokenizer.to_json(), self.tokenizer.vocab_size, self.eos_token_ids, self.config.grammar_cache
            )
        return self._grammars

    async def _constraint(self, request: GenerationRequest) -> TokenConstraint | None:
        """The request's grammar as a fresh matcher; an uncached grammar compiles in a thread, off the event loop."""
        grammar = request.params.grammar
        if grammar is None:
            return None
        self.validate(request)
        compiler = self.grammars
        if compiler.cached(grammar):
            return compiler.constraint(grammar)
        return await asyncio.to_thread(compiler.constraint, grammar)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Stream one request's events; raises before queuing when the request cannot be served."""
        seq = self._submit(request, await self._constraint(request))
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

    def _submit(self, request: GenerationRequest, constraint: TokenConstraint | None = None) -> SequenceState:
        if not self.running:
            raise EngineStopped("the engine is not running")
        self.validate(request)
        if len(self._waiting) >= self.config.max_queue:
            raise EngineOverloaded(len(self._waiting), self.config.max_queue)
        stop_ids = frozenset(request.params.stop_token_ids)
        if not request.params.ignore_eos:
            stop_ids |= self.eos_token_ids
        seq = SequenceState(request, stop_ids, self.tokenizer.detokenizer(request.prompt_token_ids), constraint)
        # Priority: an interactive request queues ahead of every waiting batch-class one (and notes the time, which
        # keeps slots reserved for the next ones: BatchCore.batch_cap); batch-class requests queue in order.
        if request.priority == INTERACTIVE:
            self._core.last_interactive = time.monotonic()
            ahead = next((i for i, s in enumerate(self._waiting) if s.request.priority != INTERACTIVE), None)
            if ahead is None:
                self._waiting.append(seq)
            else:
                self._waiting.insert(ahead, seq)
        else:
            self._waiting.append(seq)
        self._wake.set()
        return seq

    async def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._executor is not None

        def emit(events: list[tuple[SequenceState, GenerationEvent]]) -> None:
            if events:
                loop.call_soon_threadsafe(_dispatch, events)

        def interrupted(active: int) -> bool:
            return self._stopping or self._scoring > 0 or (
                bool(self._waiting) and active < self.config.max_batch and self._core.may_admit(self._waiting))

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


def _dispatch(events: list[tuple[SequenceState, GenerationEvent]]) -> None:
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
