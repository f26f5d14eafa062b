"""The engines' load and prefix-cache figures as Prometheus metrics, read from `Engine.stats()` at each scrape."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .engine import EngineStats


class EngineCollector:
    """A collector for the service's registry (`ServiceMetrics.registry`): `stats()` yields (model id, stats) of
    every engine this replica holds. Nothing is sampled between scrapes; the figures are the engine's own."""

    def __init__(self, stats: Callable[[], Iterable[tuple[str, EngineStats]]]) -> None:
        self._stats = stats

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families depend on which engines are loaded; described at collection

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["model"])

        def counter(name: str, doc: str) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, labels=["model"])

        running = gauge("llmlab_engine_running_sequences", "Sequences holding a KV slot (decoding or prefilling)")
        queued = gauge("llmlab_engine_queue_depth", "Requests waiting for a KV slot")
        slots_free = gauge("llmlab_engine_kv_slots_free", "KV slots free for new sequences")
        prompt = counter("llmlab_engine_prompt_tokens", "Prompt tokens of admitted requests")
        prefill = counter(
            "llmlab_engine_prefill_tokens", "Prompt tokens run through the model (the rest came from the prefix "
            "cache or from an equal prompt prefilled in the same step)"
        )
        generated = counter("llmlab_engine_generated_tokens", "Tokens generated")
        used = gauge("llmlab_engine_kv_blocks_used", "Prefix-cache KV blocks holding a cached prefix")
        free = gauge("llmlab_engine_kv_blocks_free", "Prefix-cache KV blocks never used yet")
        pinned = gauge("llmlab_engine_kv_blocks_pinned", "Prefix-cache KV blocks referenced by prompts being prefilled")
        queried = counter("llmlab_engine_prefix_cache_queried_tokens", "Prompt tokens looked up in the prefix cache")
        hits = counter("llmlab_engine_prefix_cache_hit_tokens", "Prompt tokens found in the prefix cache")
        rate = gauge("llmlab_engine_prefix_cache_hit_rate", "Prefix-cache hit tokens / queried tokens since start")
        evictions = counter("llmlab_engine_prefix_cache_evictions", "Prefix-cache blocks evicted (LRU)")
        grammars = gauge("llmlab_engine_grammars_cached", "Compiled grammars held for constrained decoding")
        compiles = counter("llmlab_engine_grammar_compiles", "Grammars compiled (constrained decoding cache misses)")
        grammar_hits = counter("llmlab_engine_grammar_cache_hits", "Constrained requests served a cached grammar")
        for model, s in self._stats():
            labels = [model]
            running.add_metric(labels, s.active)
            queued.add_metric(labels, s.queued)
            slots_free.add_metric(labels, s.slots - s.active)
            prompt.add_metric(labels, s.prompt_tokens)
            prefill.add_metric(labels, s.prefill_tokens)
            generated.add_metric(labels, s.tokens_generated)
            grammars.add_metric(labels, s.grammars_cached)
            compiles.add_metric(labels, s.grammar_compiles)
            grammar_hits.add_metric(labels, s.grammar_cache_hits)
            if s.cache is not None:
                c = s.cache
                used.add_metric(labels, c.cached)
                free.add_metric(labels, c.capacity - c.cached)
                pinned.add_metric(labels, c.pinned)
                queried.add_metric(labels, c.queried_tokens)
                hits.add_metric(labels, c.hit_tokens)
                rate.add_metric(labels, c.hit_rate)
                evictions.add_metric(labels, c.evictions)
        yield from (running, queued, slots_free, prompt, prefill, generated, used, free, pinned, queried, hits, rate,
                    evictions, grammars, compiles, grammar_hits)
