"""Which models this replica can generate with: the registry's records, the engines it has loaded, remote backends."""

from __future__ import annotations

import asyncio
import datetime as dt
import pathlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import structlog

from .backends import Backend, BackendRequest, BackendStatus, remote_backend
from .engine import Engine, EngineConfig
from .errors import ModelNotLoaded, engine_error
from .importer import default_cache_dir, find_cached
from .registry import ModelNotFound, ModelRecord, ModelRegistry
from .settings import InferenceSettings
from .types import GenerationEvent, GenerationRequest

log = structlog.get_logger(__name__)


class OnnxBackend:
    """The in-process backend: our continuous-batching engine over the model's ONNX artifact."""

    backend = "onnx"

    def __init__(self, model: ModelRecord, engine: Engine) -> None:
        self.model = model
        self.engine = engine

    def prompt_ids(self, request: BackendRequest) -> list[int]:
        tok = self.engine.tokenizer
        if request.messages is not None:
            return tok.encode(tok.render_chat(request.messages, add_generation_prompt=True))
        return tok.encode(request.prompt or "")

    async def generate(self, request: BackendRequest) -> AsyncIterator[GenerationEvent]:
        gen = GenerationRequest(request.request_id, self.prompt_ids(request), request.params)
        try:
            self.engine.validate(gen)
        except Exception as exc:
            raise engine_error(exc) from exc
        stream = self.engine.generate(gen)
        try:
            async for event in stream:
                yield event
        finally:
            await stream.aclose()

    async def status(self) -> BackendStatus:
        return BackendStatus(backend="onnx", model=self.model.id, ready=self.engine.running)

    async def close(self) -> None:
        await self.engine.stop()


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
        self._lock = asyncio.Lock()

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
        for backend in self._remote.values():
            await backend.close()
        self.loaded.clear()
        self._remote.clear()

    async def record(self, model_id: str) -> ModelRecord:
        return await self.registry.get(model_id)

    async def load(self, model_id: str, *, prefer_gpu: bool = False) -> LoadedModel:
        """Load an `onnx` model's engine (idempotent); the first load of a replica takes a few seconds."""
        record = await self.registry.get(model_id)
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
            )
            started = time.perf_counter()
            engine = await asyncio.to_thread(Engine.from_dir, artifact.path, config)
            await engine.start()
            loaded = LoadedModel(record, OnnxBackend(record, engine), artifact.path,
                                 time.perf_counter() - started, device, dt.datetime.now(dt.UTC))
            self.loaded[record.id] = loaded
            log.info("model loaded", model=record.id, seconds=round(loaded.load_seconds, 2), device=device)
            return loaded

    async def backend(self, model_id: str) -> tuple[ModelRecord, Backend]:
        """The record and backend that serve `model_id` (ModelNotFound / ModelNotLoaded otherwise)."""
        record = await self.registry.get(model_id)
        if record.backend == "onnx":
            loaded = self.loaded.get(record.id)
            if loaded is None:
                raise ModelNotLoaded(record.id)
            return record, loaded.backend
        if record.id not in self._remote:
            self._remote[record.id] = remote_backend(record)
        return record, self._remote[record.id]

    def engine(self, record: ModelRecord) -> Engine | None:
        loaded = self.loaded.get(record.id)
        return loaded.engine if loaded else None
