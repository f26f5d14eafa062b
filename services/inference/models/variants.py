"""Building a model's precision variant for `POST /api/v1/models/{name}/load` without blocking serving.

The build is the importer's command-line tool (`python -m services.inference.importer --quantization q`) run as a
child process: conversion needs torch and onnx_ir, which serving does not import, and a child process keeps the
event loop and the engine's threads free while it quantises. Its progress lines are logged and kept as the
build's status; concurrent loads asking for the same variant wait on the one build. The build runs to the end even
when the request that started it gives up waiting (the gateway's unary limit is 120 s): the next load finds the
variant cached. Docs: services/inference/README.md, "Quantization on load".
"""

from __future__ import annotations

import asyncio
import pathlib
import sys
import time
from dataclasses import dataclass, field

import structlog

from llmlab.runtime import Internal, Unavailable

log = structlog.get_logger(__name__)

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]
WAIT_S = 90.0  # how long a load request waits for a build before answering 503 (LLMLAB_INFERENCE_VARIANT_WAIT_S)


class VariantBuildFailed(Internal):
    """The importer could not build the variant; the model keeps serving in the precision it had (HTTP 500)."""

    default_reason = "VARIANT_BUILD_FAILED"


class VariantBuilding(Unavailable):
    """The variant is still being built; loading again later finds it (HTTP 503, with Retry-After's hint)."""

    default_reason = "VARIANT_BUILDING"


@dataclass
class VariantBuild:
    """One build in flight (or just finished): what it builds and the importer's latest progress line."""

    model: str
    quantization: str
    started: float = field(default_factory=time.monotonic)
    progress: str = "starting"
    lines: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.started


class VariantBuilder:
    """Runs importer builds as child processes, one per (model, quantization) at a time."""

    def __init__(self, cache_dir: pathlib.Path, *, python: str = sys.executable, wait_s: float = WAIT_S) -> None:
        self.cache_dir = cache_dir
        self.python = python
        self.wait_s = wait_s
        self.builds: dict[tuple[str, str], VariantBuild] = {}

    def command(self, model: str, quantization: str) -> list[str]:
        return [self.python, "-m", "services.inference.importer", "--model", model,
                "--quantization", quantization, "--cache", str(self.cache_dir)]  # fmt: skip

    async def build(self, model: str, quantization: str) -> None:
        """Build the variant (or join the build already running); raises VariantBuildFailed, or VariantBuilding
        when it takes longer than `wait_s` (the build goes on)."""
        key = (model, quantization)
        build = self.builds.get(key)
        if build is None or build.task is None or build.task.done():
            build = VariantBuild(model, quantization)
            build.task = asyncio.create_task(self._run(build), name=f"variant-build-{model}@{quantization}")
            # A failure nobody waits for any more (every request gave up) is logged by _run, not left unretrieved.
            build.task.add_done_callback(lambda t: t.cancelled() or t.exception())
            self.builds[key] = build
        try:
            await asyncio.wait_for(asyncio.shield(build.task), timeout=self.wait_s)
        except TimeoutError:
            raise VariantBuilding(
                f"The {quantization} variant of '{model}' is being built ({build.progress}); the model keeps "
                f"serving as it was. Call load again in a minute.",
                details={"model": model, "quantization": quantization, "progress": build.progress,
                         "elapsed_s": round(build.seconds, 1)},
            ) from None
        finally:
            if build.task.done() and self.builds.get(key) is build:
                del self.builds[key]

    async def stop(self) -> None:
        """Cancel the builds in flight (their child processes are killed; the importer publishes nothing half-built)."""
        tasks = [b.task for b in self.builds.values() if b.task is not None and not b.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.builds.clear()

    async def _run(self, build: VariantBuild) -> None:
        cmd = self.command(build.model, build.quantization)
        log.info("variant build started", model=build.model, quantization=build.quantization)
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=REPO_ROOT, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        assert proc.stdout is not None
        try:
            async for raw in proc.stdout:
                line = raw.decode(errors="replace").rstrip()
                if not line:
                    continue
                build.lines = [*build.lines[-49:], line]
                if line.startswith("[model-import] "):
                    build.progress = line.removeprefix("[model-import] ").strip()
                    log.info("variant build", model=build.model, quantization=build.quantization,
                             progress=build.progress)
            rc = await proc.wait()
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        if rc != 0:
            failed = next((ln for ln in reversed(build.lines) if "FAILED" in ln or "rror" in ln), None)
            reason = (failed or (build.lines[-1] if build.lines else f"exit {rc}")).removeprefix("[model-import] ")
            log.error("variant build failed", model=build.model, quantization=build.quantization, rc=rc,
                      tail=build.lines[-10:])
            raise VariantBuildFailed(
                f"Building the {build.quantization} variant of '{build.model}' failed: {reason}. The model keeps "
                f"serving as it was.",
                details={"model": build.model, "quantization": build.quantization, "exit_code": rc},
            )
        log.info("variant build finished", model=build.model, quantization=build.quantization,
                 seconds=round(build.seconds, 1))
