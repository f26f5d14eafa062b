"""Automatic prefix caching: keys and values of already computed token blocks, hash-addressed, shared, LRU-evicted.

Design (the choice, and why). The engine's KV cache is one contiguous row per batch slot (runner.py): decode binds a
leading slice of it, and GroupQueryAttention reads each row as one contiguous `[kv_heads, positions, head]` run.
Paged attention would need a block table the builder's ONNX graph cannot take. So cached prefixes live beside the
slots, in a pool of fixed-size blocks (`block_size` tokens of every layer's keys and values), and a request whose
prompt starts with cached blocks gets them *copied* into its prefill buffer; only the rest of the prompt runs through
the model. A copy is a memcpy of 45 KiB per token for SmolLM2-135M (30 layers x 3 KV heads x 64 x fp32 x K and V):
measured on the 2-core dev machine (busy), copying a cached 288-token prefix took 3-8 ms, prefilling those 300
tokens 1.2 s, and writing them into the cache the first time 24 ms (page faults of fresh pool memory included).

Addressing, as vLLM's: block i of a prompt is keyed by hash(key of block i-1, its tokens), so a key names a whole
prefix; a lookup walks a prompt's full blocks until the first miss. At least one prompt token is always left to
compute (the model must produce the last position's logits). The entry keeps its tokens and parent key, and a hit is
verified against both, so a hash collision costs a miss, never a wrong prefix.

What is cached: the blocks of every prefilled prompt (written right after its prefill) and, when a sequence ends, of
its whole history (prompt and generated tokens, for a conversation's next turn). Prompt blocks hold exactly what a
prefill computes, so greedy output over a cached prompt prefix is token-for-token the uncached output (tests).
History blocks were written one token per decode step; a prefill of the same tokens computes them equal to float
rounding, not bitwise, so a next turn served from them matches an uncached run except at rare near-ties.

Lifetime: a block has a reference count. A lookup takes a reference on every matched block (the scheduler does it
when it admits a request); the step that copies them into the request's buffer (or the request's cancellation)
releases them. Blocks with no reference stay cached and are evictable, least recently used first; when released,
a chain's blocks are queued deepest first, so a prefix's tail goes before its head (children are never more
recently used than their parents). Memory is bounded by `capacity` blocks, reserved lazily (pages are backed only
once written). Not thread-safe: the engine uses it from one step at a time (plan on the loop, steps in the worker,
never together).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

_ROOT = 0x9E3779B97F4A7C15  # the parent key of a prompt's first block


@dataclass
class _Block:
    key: int = 0
    parent: int = 0
    tokens: tuple[int, ...] = ()
    refs: int = 0


@dataclass
class PrefixHit:
    """The cached blocks a request holds references on, and how many prompt tokens they cover."""

    blocks: list[int] = field(default_factory=list)
    tokens: int = 0


@dataclass
class PrefixCacheStats:
    """Counters since start: tokens looked up and found, blocks in use."""

    block_size: int
    capacity: int  # blocks
    cached: int  # blocks holding a prefix
    pinned: int  # blocks referenced by requests being prefilled
    queried_tokens: int
    hit_tokens: int
    evictions: int

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0


class PrefixCache:
    """A pool of `capacity` KV blocks of `block_size` tokens, in `layers` arrays shaped `[capacity, kv_heads,
    block_size, head_size]` (one per past_key/past_value input, in the KV cache's order)."""

    def __init__(self, layers: int, kv_heads: int, head_size: int, dtype: np.dtype, *, block_size: int,
                 capacity: int, allocate) -> None:
        if block_size < 1 or capacity < 1:
            raise ValueError("block_size and capacity must be positive")
        self.block_size = block_size
        self.capacity = capacity
        self.pool: list[np.ndarray] = [allocate((capacity, kv_heads, block_size, head_size), dtype)
                                       for _ in range(layers)]
        self._blocks = [_Block() for _ in range(capacity)]
        self._table: dict[int, int] = {}  # key -> block id
        self._unused = list(range(capacity - 1, -1, -1))
        self._lru: collections.OrderedDict[int, None] = collections.OrderedDict()  # cached, unreferenced
        self.queried_tokens = 0
        self.hit_tokens = 0
        self.evictions = 0

    # -- keys --------------------------------------------------------------------------------------------------------

    def _keys(self, tokens: Sequence[int], blocks: int) -> list[tuple[int, int, tuple[int, ...]]]:
        out = []
        parent = _ROOT
        size = self.block_size
        for i in range(blocks):
            chunk = tuple(tokens[i * size : (i + 1) * size])
            key = hash((parent, chunk))
            out.append((key, parent, chunk))
            parent = key
        return out

    def _find(self, key: int, parent: int, chunk: tuple[int, ...]) -> int | None:
        block_id = self._table.get(key)
        if block_id is None:
            return None
        block = self._blocks[block_id]
        return block_id if block.parent == parent and block.tokens == chunk else None

    # -- lookups -----------------------------------------------------------------------------------------------------

    def peek(self, tokens: Sequence[int]) -> int:
        """How many leading tokens of `tokens` a lookup would find now (no reference taken, no statistics)."""
        found = 0
        for key, parent, chunk in self._keys(tokens, (len(tokens) - 1) // self.block_size):
            if self._find(key, parent, chunk) is None:
                break
            found += self.block_size
        return found

    def acquire(self, tokens: Sequence[int]) -> PrefixHit:
        """Take a reference on the cached blocks that start `tokens` (leaving at least its last token uncached)."""
        hit = PrefixHit()
        for key, parent, chunk in self._keys(tokens, (len(tokens) - 1) // self.block_size):
            block_id = self._find(key, parent, chunk)
            if block_id is None:
                break
            self._ref(block_id)
            hit.blocks.append(block_id)
        hit.tokens = len(hit.blocks) * self.block_size
        self.queried_tokens += len(tokens)
        self.hit_tokens += hit.tokens
        return hit

    def release(self, hit: PrefixHit) -> None:
        """Drop the references of `hit` (once; a released hit is emptied)."""
        for block_id in reversed(hit.blocks):  # deepest first: a prefix's tail is evicted before its head
            block = self._blocks[block_id]
            block.refs -= 1
            if block.refs == 0:
                self._lru[block_id] = None
        hit.blocks = []
        hit.tokens = 0

    def _ref(self, block_id: int) -> None:
        block = self._blocks[block_id]
        if block.refs == 0:
            self._lru.pop(block_id, None)
        block.refs += 1

    # -- contents ----------------------------------------------------------------------------------------------------

    def read(self, hit: PrefixHit, targets: Sequence[np.ndarray]) -> None:
        """Copy the hit's blocks into positions 0..hit.tokens of `targets` (per layer, `[kv_heads, >=tokens, head]`)."""
        if not hit.blocks:
            return
        ids = np.asarray(hit.blocks)
        n = hit.tokens
        for pool, target in zip(self.pool, targets, strict=True):
            blocks = pool[ids]  # [k, heads, size, head]
            target[:, :n] = blocks.transpose(1, 0, 2, 3).reshape(target.shape[0], n, target.shape[2])

    def insert(self, tokens: Sequence[int], sources: Sequence[np.ndarray]) -> int:
        """Cache the full blocks of `tokens`, whose keys and values are positions 0..len(tokens) of `sources` (per
        layer, `[kv_heads, >=len, head]`); blocks already cached are kept. Stops when nothing can be evicted.
        Returns the number of blocks written."""
        size = self.block_size
        new: list[tuple[int, int]] = []  # (block index in tokens, block id)
        chain: list[int] = []
        for i, (key, parent, chunk) in enumerate(self._keys(tokens, len(tokens) // size)):
            block_id = self._find(key, parent, chunk)
            if block_id is None:
                block_id = self._allocate()
                if block_id is None:
                    break
                stale = self._blocks[block_id]
                if stale.key and self._table.get(stale.key) == block_id:
                    del self._table[stale.key]
                self._blocks[block_id] = _Block(key, parent, chunk, refs=0)
                self._table[key] = block_id
                new.append((i, block_id))
            chain.append(block_id)
            self._ref(block_id)  # held while the chain is built, so the chain cannot evict itself
        if new:
            index = np.asarray([i for i, _ in new])
            ids = np.asarray([b for _, b in new])
            for pool, source in zip(self.pool, sources, strict=True):
                heads, _, head = source.shape
                runs = source[:, : (int(index.max()) + 1) * size].reshape(heads, -1, size, head)
                pool[ids] = runs[:, index].transpose(1, 0, 2, 3)
        self.release(PrefixHit(chain, len(chain) * size))
        return len(new)

    def _allocate(self) -> int | None:
        if self._unused:
            return self._unused.pop()
        if not self._lru:
            return None
        block_id, _ = self._lru.popitem(last=False)
        self.evictions += 1
        return block_id

    def stats(self) -> PrefixCacheStats:
        cached = self.capacity - len(self._unused)
        return PrefixCacheStats(
            block_size=self.block_size,
            capacity=self.capacity,
            cached=cached,
            pinned=cached - len(self._lru),
            queried_tokens=self.queried_tokens,
            hit_tokens=self.hit_tokens,
            evictions=self.evictions,
        )
