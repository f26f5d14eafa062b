"""Wiring of the files service. Its endpoints answer UNIMPLEMENTED until the files issue lands."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.files.v1", {})


SPEC = ServiceSpec(name="files", setup=setup, migrations=pathlib.Path(__file__).parent / "migrations")
