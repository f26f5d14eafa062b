"""Wiring of the analytics service: the ops endpoints now, analytics endpoints UNIMPLEMENTED until their issue."""

from __future__ import annotations

import pathlib

from llmlab.runtime import ServiceApp, ServiceSpec

from .ops import OpsServicer


async def setup(app: ServiceApp) -> None:
    app.serve_package("llmlab.analytics.v1", {"OpsService": OpsServicer(app)})


SPEC = ServiceSpec(name="analytics", setup=setup, migrations=pathlib.Path(__file__).parent / "migrations")
