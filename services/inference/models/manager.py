"""Which models this replica can generate with: the registry's records (cached), its engines, remote backends.

One lookup per request: `resolve` answers the record and its backend from a cache of records. A write through this
replica's registry (create, update, the embedded model's upsert) drops the entry at once, and closes a remote
backend built from the old record. Other replicas see a change within RECORD_TTL_S: the cache is short-lived
rather than invalidated over Redis, because a registry change is rare and an admin action, a second of staleness
is harmless, and a TTL needs no channel that can itself fail or lag.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import time
from dataclasses import dataclass, field

import onnxruntime as ort
import psutil
import structlog

from llmlab.runtime import DomainError

from ..artifacts import CachedArtifact, canonical_quantization, default_cache_dir, find_cached, find_variant
from ..backends import Backend, remote_backend
from ..backends.onnx import OnnxBackend
from ..engine import Engine, EngineConfig
from ..errors import ModelNotLoaded
from ..settings import InferenceSettings
from .registry import ModelNotFound, ModelRecord, ModelRegistry
from .variants import VariantBuilder

log = structlog.get_logger(__name__)

RECORD_TTL_S = 2.0
DRAIN_S = 120.0  # a replaced engine finishes the requests it holds for at most this long, then stops


@dataclass
class LoadedModel:
    """An engine this replica holds."""

    record: ModelRecord
    backend: OnnxBackend
    path: pathlib.Path
    load_seconds: float
    device: str  # where it runs: "cpu", or "cuda" when the CUDA execution provider took the graph
    loaded_at: dt.datetime
    quantization: str = ""  # the variant's precision (artifacts.QUANTIZATIONS)
    weight_bytes: int = 0  # the variant's files on disk
    memory_bytes: int = 0  # what the load added: resident memory on the CPU, weights + KV cache on a GPU
    build_seconds: float = 0.0  # time spent building the variant for this load (0 when it was cached)
    warnings: list[str] = field(default_factory=list)  # what the load did other than asked (no GPU, ...)

    @property
    def engine(self) -> Engine:
        return self.backend.engine


@dataclass(frozen=True)
class ModelView:
    """What this replica holds of a model, as the model lists show it: local weights or remote, which precision,
    where it runs and what it costs in memory."""

    format: str  # "onnx": weights in the model cache; "remote": served elsewhere, or no weights here
    size_bytes: int | None  # the weights as served (loaded variant, else the imported artifact); None: no weights
    quantization: str | None
    loaded: bool
    device: str | None  # None when not loaded
    memory_bytes: int = 0


class ModelManager:
    """Resolves a model id to a backend: a loaded engine for `onnx` models, a client for `triton`/`openai` ones."""

    def __init__(self, registry: ModelRegistry, settings: InferenceSettings) -> None:
        self.registry = registry
        self.settings = settings
        cache = settings.model_cache
        self.cache_dir = pathlib.Path(cache).expanduser() if cache else default_cache_dir()
        self.loaded: dict[str, LoadedModel] = {}
        self._remote: dict[str, Backend] = {}
        self._records: dict[str, tuple[float, ModelRecord]] = {}  # slug or uuid -> (expiry, record)
        self._retired: list[Backend] = []
        self._lock = asyncio.Lock()
        self._draining: set[asyncio.Task[None]] = set()
        self.variants = VariantBuilder(self.cache_dir, wait_s=settings.variant_wait_s)
        registry.on_change(self._forget)

    async def start(self) -> None:
        """Register the embedded model from its cached artifact and load it; without an artifact, say how to get one."""
        artifact = find_cached(self.settings.default_model, self.cache_dir)
        if artifact is None:
            log.warning(
                "embedded model not imported; generation answers MODEL_NOT_LOADED until it is",
                model=self.settings.default_model,
                cache=str(self.cache_dir),
                fix=f"python -m services.inference.importer --model {self.settings.default_model}",
            )
            return
        record = await self.registry.ensure_default(artifact.manifest)
        if not self.settings.load_on_start:
            return
        wanted = canonical_quantization(self.settings.quantization) if self.settings.quantization.strip() else None
        if self.settings.quantization.strip() and wanted is None:
            log.warning("LLMLAB_INFERENCE_QUANTIZATION is not a precision we build; starting as imported",
                        quantization=self.settings.quantization)
        try:
            await self.load(record.id, quantization=wanted)
        except DomainError as exc:  # the variant could not be built (or not in time): serve the import
            log.warning("starting in the imported precision", wanted=wanted, reason=exc.message)
            await self.load(record.id)

    async def stop(self) -> None:
        await self.variants.stop()
        for task in list(self._draining):
            task.cancel()
        await asyncio.gather(*self._draining, return_exceptions=True)
        for loaded in list(self.loaded.values()):
            await loaded.backend.close()
        for backend in [*self._remote.values(), *self._retired]:
            await backend.close()
        self._retired.clear()
        self.loaded.clear()
        self._remote.clear()

    async def record(self, key: str) -> ModelRecord:
        """The registry's record for a slug or UUID, from the cache when fresh (ModelNotFound otherwise)."""
        now = time.monotonic()
        hit = self._records.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        record = await self.registry.get(key)
        if hit is not None and hit[1] != record:
            await self._refresh(record)  # changed through another replica
        for k in {key, record.id, record.uuid}:
            self._records[k] = (now + RECORD_TTL_S, record)
        return record

    async def _forget(self, record: ModelRecord) -> None:
        for key in [k for k, (_, r) in self._records.items() if r.id == record.id]:
            del self._records[key]
        await self._refresh(record)

    async def _refresh(self, record: ModelRecord) -> None:
        """A changed record: a loaded engine serves on with the new row; a remote backend is rebuilt from it
        (the old one is retired, not closed: requests in flight may still stream through it)."""
        loaded = self.loaded.get(record.id)
        if loaded is not None:
            loaded.record = loaded.backend.model = record
        backend = self._remote.pop(record.id, None)
        if backend is not None:
            self._retired.append(backend)

    async def load(
        self, model_id: str, *, quantization: str | None = None, prefer_gpu: bool = False
    ) -> LoadedModel:
        """Serve an `onnx` model in `quantization` (a canonical name; None: as loaded, else as imported).

        Idempotent: a model already loaded in that precision on that device is returned with load_seconds 0. A
        variant not yet in the cache is built first (variants.py, a child process). One variant per model serves
        at a time: the new engine replaces the old one only once it has started, and the old one finishes the
        requests it holds before it stops, so a failed build or load leaves the model serving as it was."""
        record = await self.record(model_id)
        if record.backend != "onnx":
            raise ModelNotLoaded(record.id)
        imported = find_cached(record.id, self.cache_dir)
        if imported is None:
            raise ModelNotFound(
                f"The model '{record.id}' has no local artifact; import it with "
                f"`python -m services.inference.importer --model {record.id}`"
            )
        current = self.loaded.get(record.id)
        wanted = quantization or (current.quantization if current else imported.manifest.quantization)
        device, warnings = self._device(prefer_gpu)
        if current is not None and (current.quantization, current.device) == (wanted, device):
            return _again(current, warnings)
        artifact = find_variant(record.id, wanted, self.cache_dir)
        build_seconds = 0.0
        if artifact is None:
            started = time.perf_counter()
            await self.variants.build(record.id, wanted)
            build_seconds = time.perf_counter() - started
            artifact = find_variant(record.id, wanted, self.cache_dir)
            if artifact is None:
                raise ModelNotFound(f"The {wanted} variant of '{record.id}' was built but is not in the model cache")
        async with self._lock:
            current = self.loaded.get(record.id)
            if current is not None and (current.quantization, current.device) == (wanted, device):
                return _again(current, warnings)
            loaded = await self._start_engine(record, artifact, device, warnings)
            loaded.build_seconds = build_seconds
            self.loaded[record.id] = loaded
        if current is not None:
            self._retire_engine(current)
        return loaded

    def _device(self, prefer_gpu: bool) -> tuple[str, list[str]]:
        """Where a load runs and, when that is not what was asked, why."""
        if not (prefer_gpu or self.settings.device == "cuda"):
            return "cpu", []
        if "CUDAExecutionProvider" in ort.get_available_providers():
            return "cuda", []
        return "cpu", [
            "prefer_gpu: this onnxruntime build has no CUDA execution provider (install onnxruntime-gpu on a "
            "machine with an NVIDIA GPU); the model runs on the CPU"
        ]

    async def _start_engine(
        self, record: ModelRecord, artifact: CachedArtifact, device: str, warnings: list[str]
    ) -> LoadedModel:
        """Load and warm an engine over `artifact` (in a thread: the event loop keeps serving)."""
        config = EngineConfig(
            max_batch=self.settings.max_batch,
            max_queue=self.settings.max_queue,
            device=device,
            threads=self.settings.threads or None,
            prefix_cache=self.settings.prefix_cache_mb > 0,
            prefix_cache_mb=self.settings.prefix_cache_mb,
            batch_reserved_slots=min(self.settings.batch_reserved_slots, self.settings.max_batch - 1),
        )
        started = time.perf_counter()
        rss = psutil.Process().memory_info().rss
        engine = await asyncio.to_thread(Engine.from_dir, artifact.path, config)
        await engine.start()
        effective = engine.artifact.device  # the CUDA provider can still refuse the graph
        if device == "cuda" and effective != "cuda":
            warnings = [*warnings, "prefer_gpu: the CUDA execution provider did not take the model; it runs "
                                   "on the CPU"]
        weights = artifact.manifest.total_bytes
        if effective == "cpu":
            memory = max(psutil.Process().memory_info().rss - rss, 0)
        else:  # device memory: the weights and the KV cache the runner allocated up front
            kv = engine._runner.kv
            memory = weights + kv.slots * kv.slot_bytes * len(kv.input_names)
        loaded = LoadedModel(
            record, OnnxBackend(record, engine), artifact.path, time.perf_counter() - started, effective,
            dt.datetime.now(dt.UTC), quantization=artifact.manifest.quantization, weight_bytes=weights,
            memory_bytes=memory, warnings=warnings,
        )
        log.info("model loaded", model=record.id, seconds=round(loaded.load_seconds, 2), device=effective,
                 quantization=loaded.quantization, path=str(artifact.path))
        return loaded

    def _retire_engine(self, old: LoadedModel) -> None:
        """Stop a replaced engine once the requests it holds are done (at most DRAIN_S)."""

        async def drain() -> None:
            deadline = time.monotonic() + DRAIN_S
            while time.monotonic() < deadline:
                stats = old.engine.stats()
                if stats.active == 0 and stats.queued == 0:
                    break
                await asyncio.sleep(0.2)
            await old.backend.close()
            log.info("replaced engine stopped", model=old.record.id, quantization=old.quantization)

        task = asyncio.create_task(drain(), name=f"drain-{old.record.id}")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    def describe(self, record: ModelRecord) -> ModelView:
        """The model as this replica holds it. An in-process model without weights of its own is served by the
        base model's engine (a lab model registered over it) and shown as that; with neither it is remote."""
        if record.backend != "onnx":
            return ModelView("remote", None, None, False, None)
        for model_id, shared in ((record.id, False), (record.base_model, True)):
            if not model_id:
                continue
            loaded = self.loaded.get(model_id)
            if loaded is not None:
                return ModelView("onnx", loaded.weight_bytes, loaded.quantization, True, loaded.device,
                                 0 if shared else loaded.memory_bytes)
            artifact = find_cached(model_id, self.cache_dir)
            if artifact is not None:
                m = artifact.manifest
                return ModelView(m.format, m.total_bytes, m.quantization, False, None)
        return ModelView("remote", None, None, False, None)

    async def resolve(self, model_id: str) -> tuple[ModelRecord, Backend]:
        """The record and backend that serve `model_id` (ModelNotFound / ModelNotLoaded otherwise)."""
        return await self.backend_for(await self.record(model_id))

    async def backend_for(self, record: ModelRecord) -> tuple[ModelRecord, Backend]:
        """The backend of a record already looked up."""
        if record.backend == "onnx":
            loaded = self.loaded.get(record.id)
            if loaded is None:
                raise ModelNotLoaded(record.id)
            return record, loaded.backend
        if record.id not in self._remote:
            self._remote[record.id] = remote_backend(record)
        return record, self._remote[record.id]

    def servable(self, backend: str, model_id: str, base: ModelRecord | None) -> bool:
        """Whether generation can reach a model now: a remote backend is configured, or an engine holds it (or the
        registered model it derives from)."""
        if backend != "onnx":
            return True
        return model_id in self.loaded or (base is not None and base.id in self.loaded)

    async def serving(self, record: ModelRecord) -> tuple[ModelRecord, Backend]:
        """The record and backend that generate for `record`: its own, or for an in-process model without an
        engine of its own (a lab model registered over a base model), the base model's engine."""
        try:
            return await self.backend_for(record)
        except ModelNotLoaded:
            if record.backend != "onnx" or not record.base_model or record.base_model == record.id:
                raise
            try:
                base = await self.record(record.base_model)
            except ModelNotFound:
                raise ModelNotLoaded(record.id) from None
            if base.backend != "onnx" or base.id not in self.loaded:
                raise
            return await self.backend_for(base)


def _again(loaded: LoadedModel, warnings: list[str]) -> LoadedModel:
    """An already loaded model as a load answers it: nothing was loaded (0 s), this call's warnings."""
    return LoadedModel(
        loaded.record, loaded.backend, loaded.path, 0.0, loaded.device, loaded.loaded_at,
        quantization=loaded.quantization, weight_bytes=loaded.weight_bytes, memory_bytes=loaded.memory_bytes,
        warnings=warnings,
    )  # fmt: skip
