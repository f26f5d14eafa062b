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
from dataclasses import dataclass

import structlog

from ..artifacts import default_cache_dir, find_cached
from ..backends import Backend, remote_backend
from ..backends.onnx import OnnxBackend
from ..engine import Engine, EngineConfig
from ..errors import ModelNotLoaded
from ..settings import InferenceSettings
from .registry import ModelNotFound, ModelRecord, ModelRegistry

log = structlog.get_logger(__name__)

RECORD_TTL_S = 2.0


@dataclass
class LoadedModel:
    """An engine this replica holds."""

    record: ModelRecord
    backend: OnnxBackend
    path: pathlib.Path
    load_seconds: float
    device: str
    loaded_at: dt.datetime

    @property
    def engine(self) -> Engine:
        return self.backend.engine


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
        if self.settings.load_on_start:
            await self.load(record.id)

    async def stop(self) -> None:
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

    async def load(self, model_id: str, *, prefer_gpu: bool = False) -> LoadedModel:
        """Load an `onnx` model's engine (idempotent); the first load of a replica takes a few seconds."""
        record = await self.record(model_id)
        async with self._lock:
            if record.id in self.loaded:
                return self.loaded[record.id]
            if record.backend != "onnx":
                raise ModelNotLoaded(record.id)
            artifact = find_cached(record.id, self.cache_dir)
            if artifact is None:
                raise ModelNotFound(
                    f"The model '{record.id}' has no local artifact; import it with "
                    f"`python -m services.inference.importer --model {record.id}`"
                )
            device = "cuda" if prefer_gpu or self.settings.device == "cuda" else "cpu"
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
            engine = await asyncio.to_thread(Engine.from_dir, artifact.path, config)
            await engine.start()
            loaded = LoadedModel(record, OnnxBackend(record, engine), artifact.path,
                                 time.perf_counter() - started, device, dt.datetime.now(dt.UTC))
            self.loaded[record.id] = loaded
            log.info("model loaded", model=record.id, seconds=round(loaded.load_seconds, 2), device=device)
            return loaded

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
