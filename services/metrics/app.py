"""Wiring of the metrics service. Its endpoints answer UNIMPLEMENTED until the metrics issue lands."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.metrics.v1", {})


SPEC = ServiceSpec(name="metrics", setup=setup, migrations=pathlib.Path(__file__).parent / "migrations")
