"""Wiring of the inference service. Its endpoints answer UNIMPLEMENTED until the inference issue lands."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.inference.v1", {})


SPEC = ServiceSpec(name="inference", setup=setup, migrations=pathlib.Path(__file__).parent / "migrations")
