"""Fixtures of the engine's unit tests: a tiny random-weight model built once per session, engines over it."""

from __future__ import annotations

import pathlib
from collections.abc import AsyncIterator, Callable

import pytest

from services.inference.engine import Engine, EngineConfig, ModelArtifact, load_artifact

from .tiny_model import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_artifact(tiny_model_dir: pathlib.Path) -> ModelArtifact:
    return load_artifact(tiny_model_dir, threads=1)


@pytest.fixture
async def make_engine(tiny_artifact: ModelArtifact) -> AsyncIterator[Callable[..., Engine]]:
    """Build and start engines over the tiny model; all are stopped after the test."""
    engines: list[Engine] = []

    async def factory(artifact: ModelArtifact | None = None, **config: object) -> Engine:
        engine = Engine(artifact or tiny_artifact, EngineConfig(**config))  # type: ignore[arg-type]
        await engine.start()
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()
