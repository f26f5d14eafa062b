"""Export jobs (docs/files.md "Export jobs"): every export is a row with a status and progress. Small ones render
within the request; large ones (more responses than `export_job_responses`) are a message on a Redis Streams queue
that workers (`python -m services.files.worker`) consume, while the caller polls GET /api/export/jobs/{id}.

Durability: the request stages what is to be rendered as a blob (`input_key`) before it queues the job, so any
worker can run it. A worker claims the row (a new `attempt`), renders, writes the result under a key named after
its attempt and completes the row only if that attempt is still the current one (one conditional UPDATE), so a
late duplicate finisher cannot produce a second result: its blob is deleted. A killed worker's message stays
pending; another worker reclaims it after `export_claim_idle_ms` and starts a new attempt. A live worker renews its
claim and reports progress every third of that; a cancelled (or superseded) attempt stops at its next chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import structlog

from llmlab.runtime import Internal, Unavailable
from llmlab.runtime.envelope import utcnow
from llmlab.runtime.streams import EventPublisher, StreamConsumer, StreamMessage

from ..repository import ExportRow, TransferRow
from ..servicers.common import Deps, expiry
from ..signing import new_token
from . import source
from .pdf import render_pdf
from .tables import Export, reproducibility
from .tabular import render_csv, render_json
from .xlsx import render_xlsx

log = structlog.get_logger(__name__)

RENDERERS: dict[str, tuple[Callable[[Export], bytes], str]] = {
    "json": (render_json, "application/json"),
    "csv": (render_csv, "text/csv; charset=utf-8"),
    "xlsx": (render_xlsx, "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"),
    "pdf": (render_pdf, "application/pdf"),
}
ABANDONED_AFTER_S = 900
QUEUE = "files.exports"
GROUP = "files-export-workers"
EVENT = "export.requested"


class ExportStopped(Exception):
    """The attempt no longer counts: the job was cancelled, or another worker took it over."""


class RenderFailed(Exception):
    """Rendering itself failed: retrying would fail again, so the job fails."""


def input_key(export_id: str) -> str:
    return f"exports/{uuid.UUID(export_id).hex}/input.json"


def result_key(export_id: str, attempt: int, filename: str) -> str:
    return f"exports/{uuid.UUID(export_id).hex}/{attempt}/{filename}"


def dump_input(x: Export, options: dict[str, Any]) -> bytes:
    return json.dumps({"kind": x.kind, "title": x.title, "experiments": x.experiments, "subtitle": x.subtitle,
                       "include_responses": x.include_responses, "include_metrics": x.include_metrics,
                       "include_analysis": x.include_analysis, "options": options}).encode()


def load_input(data: bytes) -> tuple[Export, dict[str, Any]]:
    d = json.loads(data)
    options = d.pop("options")
    return Export(**d), options


class Attempt:
    """One attempt at a job: renders, reports progress, and stops at the next chunk once `stop` is set."""

    def __init__(self, deps: Deps, inference: grpc.aio.Channel, row: ExportRow) -> None:
        self._d = deps
        self._inference = inference
        self.row = row
        self.progress = max(row.progress, 5)
        self.stop = threading.Event()  # set from the event loop, read by the render thread

    def _tick(self, fraction: float) -> None:
        """Called from the render thread every few hundred responses."""
        if self.stop.is_set():
            raise ExportStopped
        self.progress = max(self.progress, 20 + int(55 * fraction))

    async def _report(self, record: dict[str, Any] | None = None) -> None:
        if not await self._d.repo.export_progress(self.row.id, self.row.attempt, self.progress, record):
            self.stop.set()
        if self.stop.is_set():
            raise ExportStopped

    async def heartbeat(self, interval_s: float, renew: Callable[[], Awaitable[None]]) -> None:
        """Report progress and renew the queue claim until the attempt ends; notice a cancellation."""
        while not self.stop.is_set():
            await asyncio.sleep(interval_s)
            if not await self._d.repo.export_progress(self.row.id, self.row.attempt, self.progress):
                self.stop.set()
                return
            await renew()

    async def run(self, x: Export, options: dict[str, Any]) -> None:
        row, repo = self.row, self._d.repo
        models, engine = await source.model_facts(self._inference, [e.get("model", "") for e in x.experiments])
        x.record = reproducibility(x.experiments, models, engine, options)
        self.progress = max(self.progress, 20)
        await self._report(record=x.record)
        x.tick = self._tick
        try:
            # CPU work (charts, zip) off the event loop, so RPCs and the heartbeat go on meanwhile.
            content = await asyncio.to_thread(RENDERERS[row.format][0], x)
        except ExportStopped:
            raise
        except Exception as exc:
            raise RenderFailed(type(exc).__name__) from exc
        self.progress = max(self.progress, 80)
        await self._report()
        key = result_key(row.id, row.attempt, row.filename)
        chunk = self._d.settings.chunk_bytes
        async with self._d.store.writer(key) as w:  # an exception in the block leaves no object behind
            for start in range(0, len(content), chunk):
                if self.stop.is_set():
                    raise ExportStopped
                await w.write(content[start:start + chunk])
                self.progress = max(self.progress, 80 + 19 * min(start + chunk, len(content)) // len(content))
        if not await repo.complete_export(row.id, row.attempt, key, len(content)):
            await self._d.store.delete(key)  # a late finisher: the job is someone else's or has ended
            raise ExportStopped
        self.progress = 100


class ExportJobs:
    """Starting, reading and cancelling exports (the files service's side)."""

    def __init__(self, deps: Deps, inference: grpc.aio.Channel, queue: EventPublisher | None) -> None:
        self._d = deps
        self._inference = inference
        self._queue = queue

    async def start(self, owner: str, x: Export, fmt: str, stem: str, options: dict[str, Any]) -> ExportRow:
        """Register the export and its download token; render now, or queue it for a worker when it is large."""
        export_id = str(uuid.uuid4())
        filename = f"{stem}_{utcnow():%Y%m%d}.{fmt}"
        row = ExportRow(id=export_id, owner_id=owner, kind=x.kind, format=fmt, blob_key=None, filename=filename,
                        content_type=RENDERERS[fmt][1], token=new_token(), progress=5)
        queued = self._queue is not None and x.response_count() > self._d.settings.export_job_responses
        if queued:
            # Staged before the row exists, so a queued job always finds its input.
            await self._d.store.put(input_key(export_id), await asyncio.to_thread(dump_input, x, options))
        await self._d.repo.insert_export(row)
        _, _, at = expiry(self._d.settings)
        await self._d.repo.insert_transfer(TransferRow(
            token=row.token, direction="download", target="export", target_id=export_id, blob_key=None,
            filename=filename, content_type=row.content_type, expires_at=at, used_at=None,
        ))
        if queued:
            assert self._queue is not None
            try:
                await self._queue.publish(QUEUE, EVENT, {"export_id": export_id})
            except Exception:
                log.exception("export could not be queued", export_id=export_id)
                claimed = await self._d.repo.claim_export(export_id, "request")
                if claimed is not None:
                    await self._d.repo.fail_export(export_id, claimed.attempt, "not queued")
                await self._d.store.delete(input_key(export_id))
                raise Unavailable("The export queue is unavailable; try again shortly") from None
        else:
            await self._render_now(export_id, x, options)
        return await self.get(None, export_id)  # type: ignore[return-value]

    async def _render_now(self, export_id: str, x: Export, options: dict[str, Any]) -> None:
        claimed = await self._d.repo.claim_export(export_id, "request")
        if claimed is None:
            return
        try:
            await Attempt(self._d, self._inference, claimed).run(x, options)
        except ExportStopped:
            return
        except Exception as exc:
            log.exception("export failed", export_id=export_id, format=claimed.format)
            await self._d.repo.fail_export(export_id, claimed.attempt, str(exc) or type(exc).__name__)
            raise Internal("The export could not be rendered") from None

    async def get(self, owner: str | None, export_id: str) -> ExportRow | None:
        return await self._d.repo.get_export(owner, export_id)

    async def cancel(self, owner: str | None, export_id: str) -> ExportRow | None:
        return await self._d.repo.cancel_export(owner, export_id)

    async def sweep(self) -> None:
        failed = await self._d.repo.fail_abandoned_exports(ABANDONED_AFTER_S)
        if failed:
            log.warning("abandoned exports marked failed", count=failed)


class ExportWorker:
    """A member of the export queue's consumer group: one job at a time, each an attempt (module docstring)."""

    def __init__(self, deps: Deps, inference: grpc.aio.Channel, client: Any, prefix: str, name: str) -> None:
        self._d = deps
        self._inference = inference
        self.name = name
        s = deps.settings
        self.consumer = StreamConsumer(client, prefix, QUEUE, GROUP, name, self.handle, batch=1,
                                       claim_idle_ms=s.export_claim_idle_ms, max_deliveries=s.export_max_deliveries)

    async def handle(self, msg: StreamMessage) -> None:
        """Run one job. Returns (the message is acked) when the job has ended, by this attempt or otherwise;
        raises on a Postgres, Redis or store failure, so the message stays pending and is retried."""
        export_id = str(msg.data.get("export_id", ""))
        row = await self._d.repo.claim_export(export_id, self.name)
        if row is None:
            await self._discard_input(export_id)
            return
        log.info("export job claimed", export_id=export_id, attempt=row.attempt, deliveries=msg.deliveries)
        if msg.deliveries > self._d.settings.export_max_deliveries:
            # Its workers keep dying (e.g. out of memory on this job): give up rather than take down the next one.
            await self._d.repo.fail_export(export_id, row.attempt, "too many attempts")
            await self._discard_input(export_id)
            return
        attempt = Attempt(self._d, self._inference, row)
        # The claim is renewed from the start: loading a large input must not look like a dead worker.
        beat = asyncio.create_task(attempt.heartbeat(self._d.settings.export_claim_idle_ms / 3000,
                                                     lambda: self.consumer.touch(msg.id)))
        try:
            try:
                data = await self._d.store.get(input_key(export_id))
            except FileNotFoundError:
                await self._d.repo.fail_export(export_id, row.attempt, "input missing")
                return
            x, options = await asyncio.to_thread(load_input, data)
            await attempt.run(x, options)
            log.info("export job completed", export_id=export_id, attempt=row.attempt)
        except ExportStopped:
            log.info("export job stopped", export_id=export_id, attempt=row.attempt)
        except RenderFailed as exc:
            log.exception("export failed", export_id=export_id, format=row.format)
            await self._d.repo.fail_export(export_id, row.attempt, str(exc))
        finally:
            attempt.stop.set()  # the render thread stops at its next chunk if this task was cancelled
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat
        await self._discard_input(export_id)

    async def _discard_input(self, export_id: str) -> None:
        """Delete the staged input once the job has ended; a running job (another attempt's) still needs it."""
        row = await self._d.repo.get_export(None, export_id)
        if row is None or row.status != "running":
            with contextlib.suppress(FileNotFoundError):
                await self._d.store.delete(input_key(export_id))
