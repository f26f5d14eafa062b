"""Settings of the inference service (LLMLAB_INFERENCE_<FIELD>, with the shared fallbacks of every service)."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.runtime import ServiceSettings


@dataclass(frozen=True)
class InferenceSettings(ServiceSettings):
    """Which model is embedded, where its artifact lives, and how big the engine is."""

    default_model: str = "smollm2-135m-instruct"
    model_cache: str = ""  # empty: $LLMLAB_MODEL_CACHE or ~/.cache/llmlab/models (see artifacts.default_cache_dir)
    load_on_start: bool = True  # load the embedded model when its artifact is cached
    device: str = "cpu"  # "cuda" uses onnxruntime-gpu's CUDA execution provider when present
    threads: int = 0  # intra-op threads; 0: every core
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 256  # requests waiting for a slot before "overloaded"
    prefix_cache_mb: float = 512.0  # host memory for the engine's prefix cache (engine/prefix_cache.py); 0: off
    # OpenAI batches (docs/batches.md): lines per work unit, units a worker runs at once, the queue's reclaim
    # time (a dead worker's unit is taken over after it), deliveries before a unit is dead-lettered, retries of a
    # line the engine refused as overloaded, and how often each worker looks for batches to finalize.
    batch_chunk_lines: int = 8
    batch_consumers: int = 6
    batch_claim_idle_ms: int = 30_000
    batch_max_deliveries: int = 5
    batch_line_retries: int = 4
    batch_finalize_interval_s: float = 1.0
    # Engine slots kept free for interactive requests while batch work runs (engine.py "Priority"); 0: none.
    batch_reserved_slots: int = 4
