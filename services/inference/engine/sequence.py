"""One request's state inside the engine's batch, and the plan of one step (batch.py runs them)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..domain import GenerationEvent, GenerationRequest
from .constraint import TokenConstraint
from .prefix_cache import PrefixHit
from .sampling import RequestSampler
from .tokenizer import IncrementalDetokenizer, StopMatcher


class SequenceState:
    """One request's state from submission to its final event."""

    def __init__(
        self,
        request: GenerationRequest,
        stop_ids: frozenset[int],
        detok: IncrementalDetokenizer,
        constraint: TokenConstraint | None = None,
    ) -> None:
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
        self.constraint = constraint  # constrained decoding (constraint.py): masks this sequence's logits
        self.complete = False  # the grammar cannot grow any more: the sequence ends with "stop"
        self.cancelled = False
        self.finished = False
        self.t_submit = time.perf_counter()
        self.t_first: float | None = None


@dataclass
class Step:
    kind: str  # "prefill", "chunk", "decode" or "reap"
    admitted: list[SequenceState] = field(default_factory=list)
    tokens: int = 0  # prompt tokens this step may compute
