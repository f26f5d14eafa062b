"""Batch work on the inference workers (`python -m services.inference.worker`; docs/batches.md "Execution").

Messages on the `inference.batches` queue (a Redis Streams consumer group, libs/llmlab/runtime/streams.py):
- `batch.validate {batch_id}`: read the input file through the files service, store its lines in Postgres
  (`batch_lines`), move the batch to in_progress and queue one `batch.chunk` per `batch_chunk_lines` lines.
- `batch.chunk {batch_id, chunk}`: run the chunk's unfinished lines concurrently through the inference service,
  writing each result once (repository.finish_line). A worker runs `batch_consumers` chunks at a time, so the
  engine sees up to consumers x chunk lines together and batches them.

A worker killed mid-chunk leaves its message pending; another member reclaims it after `batch_claim_idle_ms` and
runs the lines that have no result yet. A live worker renews its claim (and its lines' `started_at`) every third of
that. Every worker also runs the finalizer loop: a batch whose lines are all written (or whose window has passed,
or which is cancelling with no line running) is sealed under a lease, its output and error files are assembled
from `batch_lines` in line order and stored through the files service, and the batch ends with one UPDATE fenced by
the finalizer's attempt; a finalizer that loses the race deletes the files it stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import grpc
import structlog

from llmlab.runtime.streams import EventPublisher, StreamConsumer, StreamMessage

from . import domain
from .calls import RETRYABLE, Calls, LineResult, acting_as
from .repository import BatchRepository, BatchRow, LineRow

log = structlog.get_logger(__name__)

QUEUE = "inference.batches"
GROUP = "inference-batch-workers"
VALIDATE, CHUNK = "batch.validate", "batch.chunk"
EVENTS_STREAM = "batches"  # batch.completed / batch.failed, for webhooks (docs/batches.md "Events")
UNRUN = {
    "expired": {"code": "batch_expired",
                "message": "This request could not be executed before the completion window expired."},
    "cancelled": {"code": "batch_cancelled", "message": "This request was not executed: the batch was cancelled."},
    "completed": {"code": "server_error", "message": "This request was not executed."},
}


class BatchWorker:
    """The consumers of the batch queue in one worker process, and its finalizer loop."""

    def __init__(self, repo: BatchRepository, calls: Calls, client: Any, prefix: str, name: str,
                 events: EventPublisher, settings: Any) -> None:
        self._repo = repo
        self._calls = calls
        self._events = events
        self._s = settings
        self.lease_s = settings.batch_claim_idle_ms / 1000
        # Several members per process, one message each at a time: their chunks' lines reach the engine together.
        self.consumers: list[StreamConsumer] = []
        for i in range(settings.batch_consumers):
            self.consumers.append(StreamConsumer(
                client, prefix, QUEUE, GROUP, f"{name}-{i}", lambda msg, i=i: self.handle(self.consumers[i], msg),
                batch=1, claim_idle_ms=settings.batch_claim_idle_ms, max_deliveries=settings.batch_max_deliveries))

    async def handle(self, consumer: StreamConsumer, msg: StreamMessage) -> None:
        batch_id = str(msg.data.get("batch_id", ""))
        if msg.type == CHUNK and msg.deliveries > self._s.batch_max_deliveries:
            # Its workers keep dying on this unit (e.g. out of memory): its lines fail rather than the next worker.
            await self.give_up(batch_id, int(msg.data.get("chunk", 0)))
            return
        beat = asyncio.create_task(self._renew_claim(consumer, msg.id))
        try:
            if msg.type == VALIDATE:
                await self.validate(batch_id)
            elif msg.type == CHUNK:
                await self.run_chunk(batch_id, int(msg.data.get("chunk", 0)))
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await beat

    async def _renew_claim(self, consumer: StreamConsumer, msg_id: str) -> None:
        while True:
            await asyncio.sleep(self.lease_s / 3)
            await consumer.touch(msg_id)

    # -- validating ----------------------------------------------------------------------------------------------

    async def validate(self, batch_id: str) -> None:
        row = await self._repo.claim_validation(batch_id)
        if row is None:
            # Not validating any more. A worker that died after starting the batch but before queueing every
            # chunk left this message pending: queue the chunks that still have lines to run (running one twice
            # is harmless, its lines are written once).
            current = await self._repo.get(None, batch_id)
            if current is not None and current.status == "in_progress":
                await self._queue_chunks(batch_id, await self._repo.pending_chunks(batch_id))
            return
        with acting_as(row.principal, f"req_validate_{batch_id}"):
            data = await self._calls.read_file(row.input_file_id)
        if data is None:
            errors = [{"code": "file_not_found", "message": f"The input file {row.input_file_id} no longer exists.",
                       "param": "input_file_id", "line": None}]
            await self._fail(row, errors)
            return
        lines, errors = await asyncio.to_thread(domain.parse_lines, data, row.endpoint)
        if errors:
            await self._fail(row, errors)
            return
        chunks = await self._repo.start(batch_id, row.attempt, lines, self._s.batch_chunk_lines)
        if chunks is None:
            return  # cancelled meanwhile (the finalizer ends it) or taken over
        log.info("batch started", batch_id=batch_id, lines=len(lines), chunks=chunks)
        await self._queue_chunks(batch_id, await self._repo.pending_chunks(batch_id))

    async def _fail(self, row: BatchRow, errors: list[dict[str, Any]]) -> None:
        if await self._repo.fail_validation(row.id, row.attempt, errors):
            log.info("batch failed validation", batch_id=row.id, errors=len(errors))
            ended = await self._repo.get(None, row.id)
            if ended is not None:
                await self._event("batch.failed", ended)

    async def _queue_chunks(self, batch_id: str, chunks: list[int]) -> None:
        for chunk in chunks:
            await self._events.publish(QUEUE, CHUNK, {"batch_id": batch_id, "chunk": chunk})

    # -- running lines -------------------------------------------------------------------------------------------

    async def run_chunk(self, batch_id: str, chunk: int) -> None:
        row = await self._repo.get(None, batch_id)
        if row is None or row.status != "in_progress" or row.sealed:
            return
        lines = [ln for ln in await self._repo.chunk_lines(batch_id, chunk) if ln.request is not None]
        if not lines:
            return
        state = {"status": row.status, "running": {ln.line_index for ln in lines}}
        renew = asyncio.create_task(self._renew_lines(batch_id, state))
        try:
            await asyncio.gather(*(self._run_line(row, ln, state) for ln in lines))
        finally:
            renew.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await renew
        await self.finalize_due()

    async def give_up(self, batch_id: str, chunk: int) -> None:
        error = {"code": "server_error", "message": "The request failed repeatedly on the batch workers."}
        for ln in await self._repo.chunk_lines(batch_id, chunk):
            record = domain.output_line(batch_id, ln.line_index, ln.custom_id, 0, None, error)
            await self._repo.finish_line(batch_id, ln.line_index, "failed", record)
        log.error("batch unit given up", batch_id=batch_id, chunk=chunk)

    async def _renew_lines(self, batch_id: str, state: dict[str, Any]) -> None:
        """Keep this chunk's lines marked running, and notice a cancellation or a seal."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            state["status"] = await self._repo.renew(batch_id, sorted(state["running"]))

    async def _run_line(self, row: BatchRow, ln: LineRow, state: dict[str, Any]) -> None:
        try:
            result = await self._call(row, ln, state)
            if result is None:
                return  # the batch was cancelled, expired or sealed before this line started
            outcome = "completed" if result.status_code == 200 else "failed"
            record = domain.output_line(row.id, ln.line_index, ln.custom_id, result.status_code, result.body)
            await self._repo.finish_line(row.id, ln.line_index, outcome, record)
        finally:
            state["running"].discard(ln.line_index)

    async def _call(self, row: BatchRow, ln: LineRow, state: dict[str, Any]) -> LineResult | None:
        assert ln.request is not None
        delay = 0.5
        for attempt in range(self._s.batch_line_retries + 1):
            if state["status"] != "in_progress" or time.time() >= row.expires_at.timestamp():
                return None
            with acting_as(row.principal, domain.line_request_id(row.id, ln.line_index)):
                result = await self._calls.run_line(row.endpoint, ln.request)
            if result.status_code not in RETRYABLE or attempt == self._s.batch_line_retries:
                return result
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
        return None

    # -- finalizing ----------------------------------------------------------------------------------------------

    async def finalizer(self, stop: asyncio.Event) -> None:
        """Finalize due batches every `batch_finalize_interval_s` (any worker may; one wins each batch's lease)."""
        while not stop.is_set():
            try:
                await self.finalize_due()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch finalizer pass failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._s.batch_finalize_interval_s)

    async def finalize_due(self) -> None:
        for batch_id, target in await self._repo.due(self.lease_s):
            await self.finalize(batch_id, target)

    async def finalize(self, batch_id: str, target: str) -> BatchRow | None:
        row = await self._repo.seal(batch_id, target, self.lease_s * 2, UNRUN[target])
        if row is None:
            return None
        lines = await self._repo.all_lines(batch_id)
        out, err = [], []
        for ln in lines:
            record = ln.result or {}
            if "error" in record and "id" not in record:  # decided without running (invalid, expired, cancelled)
                record = domain.output_line(batch_id, ln.line_index, ln.custom_id, 0, None, record["error"])
            (out if ln.outcome == "completed" else err).append(record)
        stored: list[str] = []
        try:
            with acting_as(row.principal, f"req_finalize_{batch_id}"):
                output_id = await self._store(row, "output", out, stored) if out else None
                error_id = await self._store(row, "error", err, stored) if err else None
            done = await self._repo.finish(batch_id, row.attempt, target, output_id, error_id)
        except grpc.aio.AioRpcError:
            log.warning("batch files could not be stored; retried at the lease's end", batch_id=batch_id)
            done = None
        if done is None:
            with acting_as(row.principal, f"req_finalize_{batch_id}"):
                for file_id in stored:
                    await self._calls.delete_file(file_id)
            return None
        log.info("batch ended", batch_id=batch_id, status=done.status, completed=done.completed, failed=done.failed)
        await self._event("batch.completed" if done.status == "completed" else f"batch.{done.status}", done)
        return done

    async def _store(self, row: BatchRow, kind: str, records: list[dict[str, Any]], stored: list[str]) -> str:
        file_id = await self._calls.store_file(row.owner_id, f"{row.id}_{kind}.jsonl", domain.jsonl(records))
        stored.append(file_id)
        return file_id

    async def _event(self, event_type: str, row: BatchRow) -> None:
        try:
            await self._events.publish(EVENTS_STREAM, event_type, {
                "principal": row.principal, "owner_id": row.owner_id, "batch": domain.render_batch(row)})
        except Exception as exc:  # the batch has ended either way; a webhook is best effort
            log.warning("batch event not published", batch_id=row.id, error=type(exc).__name__)
