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
    quantization: str = ""  # precision the embedded model starts in (q4_0/int4, q8_0/int8, fp32); empty: as imported
    variant_wait_s: float = 90.0  # a load waits this long for a variant build, then answers 503 VARIANT_BUILDING
    device: str = "cpu"  # "cuda" uses onnxruntime-gpu's CUDA execution provider when present
    threads: int = 0  # intra-op threads; 0: every core
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 256  # requests waiting for a slot before "overloaded"
    prefix_cache_mb: float = 512.0  # host memory for the engine's prefix cache (engine/prefix_cache.py); 0: off
    # training worker (services/inference/training/worker.py, docs/training.md)
    training_claim_idle_ms: int = 30_000  # a job whose worker is silent this long is taken over by another
    training_max_deliveries: int = 5
    training_checkpoint_every: int = 25  # steps between periodic checkpoints (what a killed worker can lose)
    training_threads: int = 0  # torch threads of the trainer; 0: torch's default (every core)
    training_log_every: int = 10  # a log line every N steps (and one per epoch)
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
