"""Model steps over a shared KV cache: batched prefill, chunked prefill of one long prompt, and batched decode.

The cache is one `[slots, kv_heads, max_len, head_size]` buffer per layer for keys and one for values, bound through
IOBinding as both `past_key_values.*` and `present.*` (GroupQueryAttention's shared-buffer mode writes each new
position in place), so nothing is copied between decode steps. A decode step over slots `0..n` binds a
leading-dimension slice, which is contiguous: the engine keeps the decoding slots compact.

Prefill does not run in those buffers on the CPU: GroupQueryAttention's CPU kernel allocates a scores scratch of
batch x heads x prompt x buffer-length floats, which against a context-long buffer is hundreds of MB per step. Prompts
are prefilled into a work buffer exactly as long as the (padded) prompt and then copied into their slots (a memcpy of
the prompt's keys and values, 1-2% of the prefill's time). With the device backend (KV cache in device memory,
used for CUDA) prompts are prefilled directly into their slots, and a long prompt into an extra staging slot.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from .artifact import GraphInfo, ModelArtifact
from .prefix_cache import PrefixCache, PrefixHit

_INT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}
_FLOAT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def host_buffer(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A zero-cost reservation: the OS backs (4 KiB) pages only once written, so a slot costs what it holds.

    numpy's own large allocations ask for transparent huge pages, which would back every 2 MiB head-region of a
    slot on its first token (and take longer to fault in on a VM).
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class KVCache:
    """Per-layer key and value buffers with one row per slot, in host memory (numpy) or device memory (OrtValue)."""

    def __init__(
        self,
        graph: GraphInfo,
        slots: int,
        max_len: int,
        *,
        device: str = "cpu",
        device_id: int = 0,
        backend: str | None = None,
    ) -> None:
        self.graph = graph
        self.slots = slots
        self.max_len = max_len
        self.device = device
        self.device_id = device_id
        self.dtype = np.dtype(graph.kv_dtype)
        self.slot_shape = (graph.num_kv_heads, max_len, graph.head_size)
        self.slot_bytes = int(np.prod(self.slot_shape)) * self.dtype.itemsize
        self.input_names = graph.past_key_names + graph.past_value_names
        self.output_names = graph.present_key_names + graph.present_value_names
        self.backend = backend or ("numpy" if device == "cpu" else "ortvalue")
        if self.backend not in ("numpy", "ortvalue"):
            raise ValueError(f"unknown KV backend {self.backend!r}")
        shape = (slots, *self.slot_shape)
        self.arrays: list[np.ndarray] = []
        self._values: list[ort.OrtValue] = []
        if self.backend == "numpy":
            if device != "cpu":
                raise ValueError("the numpy KV backend keeps the cache in host memory; use 'ortvalue' on a device")
            self.arrays = [host_buffer(shape, self.dtype) for _ in self.input_names]
            self._base = [a.ctypes.data for a in self.arrays]
        else:
            self._values = [
                ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, device, device_id)
                for _ in self.input_names
            ]
            self._base = [v.data_ptr() for v in self._values]
            self._copier = _SlotCopier(len(self.input_names), self.slot_shape, self.dtype, device, device_id)

    def bind(self, io: ort.IOBinding, start: int, count: int) -> None:
        """Bind slots start..start+count as past and present of every layer (the same memory: shared-buffer mode)."""
        shape = (count, *self.slot_shape)
        offset = start * self.slot_bytes
        for name_in, name_out, base in zip(self.input_names, self.output_names, self._base, strict=True):
            io.bind_input(name_in, self.device, self.device_id, self.dtype, shape, base + offset)
            io.bind_output(name_out, self.device, self.device_id, self.dtype, shape, base + offset)

    def move(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst`."""
        if src == dst or length <= 0:
            return
        if self.backend == "numpy":
            for a in self.arrays:
                a[dst, :, :length] = a[src, :, :length]
        else:
            self._copier.copy(
                [b + src * self.slot_bytes for b in self._base], [b + dst * self.slot_bytes for b in self._base]
            )


class _WorkBuffers:
    """Host buffers of one layout `[batch, kv_heads, width, head]` per layer, reshaped per use, grown on demand."""

    def __init__(self, graph: GraphInfo, capacity_tokens: int) -> None:
        self.graph = graph
        self.dtype = np.dtype(graph.kv_dtype)
        self._names = (
            graph.past_key_names + graph.past_value_names,
            graph.present_key_names + graph.present_value_names,
        )
        self.capacity = 0
        self._flat: list[np.ndarray] = []
        self.reserve(capacity_tokens)

    def reserve(self, tokens: int) -> None:
        if tokens <= self.capacity:
            return
        per_token = self.graph.num_kv_heads * self.graph.head_size
        self._flat = [host_buffer((tokens * per_token,), self.dtype) for _ in self._names[0]]
        self.capacity = tokens

    def views(self, batch: int, width: int) -> list[np.ndarray]:
        shape = (batch, self.graph.num_kv_heads, width, self.graph.head_size)
        count = int(np.prod(shape))
        return [f[:count].reshape(shape) for f in self._flat]

    def bind(self, io: ort.IOBinding, batch: int, width: int) -> None:
        shape = (batch, self.graph.num_kv_heads, width, self.graph.head_size)
        for name_in, name_out, flat in zip(*self._names, self._flat, strict=True):
            io.bind_input(name_in, "cpu", 0, self.dtype, shape, flat.ctypes.data)
            io.bind_output(name_out, "cpu", 0, self.dtype, shape, flat.ctypes.data)


class _SlotCopier:
    """Device-to-device copy of whole slots, through an onnxruntime graph of Identity nodes bound to raw pointers."""

    def __init__(self, count: int, slot_shape: tuple[int, ...], dtype: np.dtype, device: str, device_id: int) -> None:
        from onnx import TensorProto, helper

        elem = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16}[np.dtype(dtype)]
        shape = [1, *slot_shape]
        graph = helper.make_graph(
            [helper.make_node("Identity", [f"x{i}"], [f"y{i}"]) for i in range(count)],
            "slot_copy",
            [helper.make_tensor_value_info(f"x{i}", elem, shape) for i in range(count)],
            [helper.make_tensor_value_info(f"y{i}", elem, shape) for i in range(count)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=providers)
        self._shape = shape
        self._dtype = dtype
        self._device = device
        self._device_id = device_id

    def copy(self, sources: Sequence[int], targets: Sequence[int]) -> None:
        io = self._session.io_binding()
        for i, (src, dst) in enumerate(zip(sources, targets, strict=True)):
            io.bind_input(f"x{i}", self._device, self._device_id, self._dtype, self._shape, src)
            io.bind_output(f"y{i}", self._device, self._device_id, self._dtype, self._shape, dst)
        self._session.run_with_iobinding(io)


class ModelRunner:
    """Runs the model over slots of the KV cache. Not thread-safe: one step at a time."""

    def __init__(
        self,
        artifact: ModelArtifact,
        *,
        max_batch: int,
        max_len: int,
        prefill_tokens: int = 512,
        kv_backend: str | None = None,
        pad_token_id: int = 0,
    ) -> None:
        self.artifact = artifact
        self.session = artifact.session
        self.graph = artifact.graph
        self.max_batch = max_batch
        self.max_len = max_len
        backend = kv_backend or ("numpy" if artifact.device == "cpu" else "ortvalue")
        # The device backend prefills a long prompt in one extra slot before it joins the batch.
        slots = max_batch if backend == "numpy" else max_batch + 1
        self.kv = KVCache(self.graph, slots, max_len, device=artifact.device, backend=backend)
        self._staging_slot = max_batch
        self._work = _WorkBuffers(self.graph, prefill_tokens) if backend == "numpy" else None
        self._staged = _WorkBuffers(self.graph, 0) if backend == "numpy" else None
        self._staged_width = 0
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name: o for o in self.session.get_outputs()}
        self._ids_dtype = _INT_TYPES[inputs["input_ids"].type]
        self._mask_dtype = _INT_TYPES[inputs["attention_mask"].type]
        self._logits_dtype = _FLOAT_TYPES[outputs["logits"].type]
        self.vocab_size = self.graph.vocab_size
        self._logits = host_buffer((max_batch + 1, 1, self.vocab_size), self._logits_dtype)
        # Decode inputs live in fixed buffers bound once per batch size; a step only writes into them. The mask is
        # always max_len wide (the graph reads only its row sums and its width): row i holds ones up to slot i's
        # current position, so it grows by one element per step and is never rebuilt.
        self._ids = host_buffer((max_batch + 1, 1), self._ids_dtype)
        self._mask = host_buffer((max_batch + 1, max_len), self._mask_dtype)
        self._io: dict[str, ort.IOBinding] = {}
        self._bound: dict[str, tuple[Any, ...]] = {}
        self.pad_token_id = pad_token_id

    # -- plumbing ----------------------------------------------------------------------------------------------------

    def _binding(self, purpose: str, key: tuple[Any, ...], bind: Any) -> ort.IOBinding:
        """One IOBinding per purpose; its KV bindings are redone only when the slice it covers changes."""
        io = self._io.get(purpose)
        if io is None:
            io = self._io[purpose] = self.session.io_binding()
        if self._bound.get(purpose) != key:
            bind(io)
            self._bound[purpose] = key
        return io

    def _run(
        self, io: ort.IOBinding, ids: np.ndarray, mask: np.ndarray, ready: Callable[[], None] | None = None
    ) -> np.ndarray:
        batch, width = ids.shape
        io.bind_cpu_input("input_ids", ids)
        io.bind_cpu_input("attention_mask", mask)
        if self.graph.last_token_logits or width == 1:
            out = self._logits[:batch]
        else:
            out = np.empty((batch, width, self.vocab_size), self._logits_dtype)
        io.bind_output("logits", "cpu", 0, self._logits_dtype, out.shape, out.ctypes.data)
        if ready is not None:
            ready()
        self.session.run_with_iobinding(io)
        return out

    def _rows(self, out: np.ndarray, last: np.ndarray) -> np.ndarray:
        rows = out[:, 0] if out.shape[1] == 1 else out[np.arange(out.shape[0]), last]
        return rows if rows.dtype == np.float32 else rows.astype(np.float32)

    # -- steps -------------------------------------------------------------------------------------------------------

    def prefill(self, start: int, prompts: Sequence[Sequence[int]]) -> np.ndarray:
        """Prefill prompts into slots start..start+k in one step (right padded); the logits of each last token."""
        k = len(prompts)
        lengths = np.fromiter((len(p) for p in prompts), dtype=np.int64, count=k)
        width = int(lengths.max())
        ids = np.full((k, width), self.pad_token_id, dtype=self._ids_dtype)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = prompt
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(self._mask_dtype)
        for row, length in enumerate(lengths):
            self._reset_mask(start + row, int(length))
        if self._work is None:
            io = self._binding("prefill", (start, k), lambda io: self.kv.bind(io, start, k))
            return self._rows(self._run(io, ids, mask), lengths - 1)
        work = self._work
        work.reserve(k * width)
        io = self._binding("prefill", (k, width, work.capacity), lambda io: work.bind(io, k, width))
        logits = self._rows(self._run(io, ids, mask), lengths - 1)
        for dst, src in zip(self.kv.arrays, work.views(k, width), strict=True):
            dst[start : start + k, :, :width] = src
        return logits

    def _reset_mask(self, slot: int, length: int) -> None:
        self._mask[slot, :length] = 1
        self._mask[slot, length:] = 0

    def move(self, src: int, dst: int, length: int) -> None:
        """Move a sequence of `length` cached positions from slot `src` to slot `dst`."""
        self.kv.move(src, dst, length)
        self._mask[dst] = self._mask[src]

    def prefill_cached(
        self, start: int, suffixes: Sequence[Sequence[int]], hits: Sequence[PrefixHit], cache: PrefixCache
    ) -> np.ndarray:
        """Prefill prompts whose first `past` tokens are cached (`hits`, all covering the same `past`) into slots
        start..start+k, running only their suffixes (all of one length) after the cached keys and values; the
        logits of each last token. Equal lengths keep every row unpadded: the last-token gather and
        GroupQueryAttention's per-row past length are then exact. The CPU kernel takes a batch over a past only
        for one new token per row, so longer suffixes run one row per step."""
        assert self._work is not None, "prefix caching runs on the host KV backend"
        k, n, past = len(suffixes), len(suffixes[0]), hits[0].tokens
        if n > 1 and k > 1:
            return np.concatenate(
                [self.prefill_cached(start + i, [suffixes[i]], [hits[i]], cache).copy() for i in range(k)]
            )
        width = past + n
        work = self._work
        work.reserve(k * width)
        views = work.views(k, width)
        for row, hit in enumerate(hits):
            cache.read(hit, [v[row] for v in views])
        ids = np.asarray(suffixes, dtype=self._ids_dtype).reshape(k, n)
        mask = np.ones((k, width), dtype=self._mask_dtype)
        for row in range(k):
            self._reset_mask(start + row, width)
        io = self._binding("prefill", (k, width, work.capacity, "past"), lambda io: work.bind(io, k, width))
        logits = self._rows(self._run(io, ids, mask), np.full(k, n - 1))
        for dst, src in zip(self.kv.arrays, views, strict=True):
            dst[start : start + k, :, :width] = src
        return logits

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Give slot `dst` the first `length` cached positions of slot `src` (a prompt prefilled once for several
        sequences)."""
        self.move(src, dst, length)

    def cache_slot(self, slot: int, tokens: Sequence[int], cache: PrefixCache) -> int:
        """Offer the full blocks of `tokens` (positions 0..len held in `slot`) to the prefix cache."""
        if self.kv.backend != "numpy":
            return 0
        return cache.insert(tokens, [a[slot] for a in self.kv.arrays])

    def stage(self, total: int, hit: PrefixHit | None = None, cache: PrefixCache | None = None) -> None:
        """Start staging a long prompt of `total` tokens, its first `hit.tokens` copied from the prefix cache."""
        if self._staged is None:
            return
        self._staged.reserve(total)
        self._staged_width = total
        if hit is not None and cache is not None and hit.tokens:
            cache.read(hit, [v[0] for v in self._staged.views(1, total)])

    def prefill_chunk(self, tokens: Sequence[int], past: int, total: int) -> np.ndarray:
        """Prefill the next chunk of a long prompt of `total` tokens whose first `past` are staged (`stage` was
        called before the first chunk); its last logits."""
        n = len(tokens)
        ids = np.asarray(tokens, dtype=self._ids_dtype)[None, :]
        mask = np.ones((1, past + n), dtype=self._mask_dtype)
        if self._staged is None:
            slot = self._staging_slot
            io = self._binding("chunk", (slot,), lambda io: self.kv.bind(io, slot, 1))
        else:
            staged = self._staged
            width = self._staged_width
            io = self._binding("chunk", (width, staged.capacity), lambda io: staged.bind(io, 1, width))
        return self._rows(self._run(io, ids, mask), np.array([n - 1]))[0]

    def commit_staged(self, slot: int, length: int) -> None:
        """Move the staged prompt's keys and values into `slot`."""
        self._reset_mask(slot, length)
        if self._staged is None:
            self.kv.move(self._staging_slot, slot, length)
            return
        for dst, src in zip(self.kv.arrays, self._staged.views(1, self._staged_width), strict=True):
            dst[slot, :, :length] = src[0, :, :length]

    def decode(self, tokens: np.ndarray, lengths: np.ndarray, ready: Callable[[], None] | None = None) -> np.ndarray:
        """One token for each of slots 0..n: `tokens[i]` goes at position `lengths[i]`; the logits [n, V].

        `ready` is called once the inputs are in place, just before the model runs (and releases the GIL).
        """
        n = len(tokens)
        io = self._binding("decode", (n,), lambda io: self._bind_decode(io, n))
        self._ids[:n, 0] = tokens
        self._mask[np.arange(n), lengths] = 1
        if ready is not None:
            ready()
        self.session.run_with_iobinding(io)
        rows = self._logits[:n, 0]
        return rows if rows.dtype == np.float32 else rows.astype(np.float32)

    def _bind_decode(self, io: ort.IOBinding, n: int) -> None:
        self.kv.bind(io, 0, n)
        io.bind_input("input_ids", "cpu", 0, self._ids_dtype, (n, 1), self._ids.ctypes.data)
        io.bind_input("attention_mask", "cpu", 0, self._mask_dtype, (n, self.max_len), self._mask.ctypes.data)
        io.bind_output("logits", "cpu", 0, self._logits_dtype, (n, 1, self.vocab_size), self._logits.ctypes.data)

    def warmup(self, tokens: int) -> None:
        """Run one prefill of `tokens` tokens and one decode step into slot 0, so that the first requests do not pay
        for onnxruntime's first-run allocations (its arena grows to the largest prefill once, then is reused)."""
        width = max(1, min(tokens, self.max_len - 1))
        self.prefill(0, [[self.pad_token_id] * width])
        self.decode(np.array([self.pad_token_id]), np.array([width]))
        self._reset_mask(0, 0)

    def describe(self) -> dict[str, Any]:
        return {
            "slots": self.max_batch,
            "max_len": self.max_len,
            "kv_backend": self.kv.backend,
            "kv_bytes_per_token": self.graph.kv_bytes_per_token,
        }
