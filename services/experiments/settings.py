"""Settings of the experiments service and its workers (`LLMLAB_EXPERIMENTS_<NAME>`; docs/sweeps.md,
docs/research.md)."""

from __future__ import annotations

import dataclasses

from llmlab.runtime import ServiceSettings, SettingsError


@dataclasses.dataclass(frozen=True)
class ExperimentsSettings(ServiceSettings):
    # Largest sweep: combinations x responses_per_combination (400 past it, nothing queued).
    sweep_max_responses: int = 5000
    # Combinations one worker process generates at once; each submits all its responses together, so the engine
    # batches up to this x responses_per_combination sequences from one worker.
    sweep_worker_concurrency: int = 16
    # A work item held this long without its worker renewing the claim (killed) is taken over by another worker
    # (XAUTOCLAIM). A live worker renews every third of it.
    sweep_claim_idle_ms: int = 30_000
    # Deliveries of one work item before it goes to the dead-letter stream and its missing responses are stored
    # as failed.
    sweep_max_deliveries: int = 3
    # Throughput assumed for estimates while the engine has no recent generations to measure (tokens/s).
    sweep_fallback_tokens_per_second: float = 40.0
    # Research runs (docs/research.md "Runs"): generations one run keeps in flight, and how long a run held by a
    # silent (killed) worker waits before another worker takes it over.
    research_run_concurrency: int = 128
    research_run_claim_idle_ms: int = 30_000

    def __post_init__(self) -> None:
        problems = [f"LLMLAB_EXPERIMENTS_{name.upper()} must be positive"
                    for name in ("sweep_max_responses", "sweep_worker_concurrency", "sweep_claim_idle_ms",
                                 "sweep_max_deliveries", "sweep_fallback_tokens_per_second",
                                 "research_run_concurrency", "research_run_claim_idle_ms")
                    if getattr(self, name) <= 0]
        if problems:
            raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))
