"""BatchService: `/v1/batches` (create, retrieve, cancel, list) - proto in, OpenAI batch objects out. The work itself
runs on the inference workers (jobs.py)."""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from google.protobuf import json_format

from llmlab.inference.v1 import batch_service_pb2 as pb
from llmlab.inference.v1 import batch_service_pb2_grpc as pb_grpc
from llmlab.runtime import PermissionDenied, Unavailable
from llmlab.runtime.context import current_principal, principal_var
from llmlab.runtime.streams import EventPublisher

from ..openai.servicer import protocol_error
from ..openai.validation import ProtocolError
from . import domain
from .calls import Calls
from .jobs import QUEUE, VALIDATE
from .repository import BatchRepository, BatchRow

log = structlog.get_logger(__name__)


def _message(row: BatchRow) -> pb.Batch:
    return json_format.ParseDict(domain.render_batch(row), pb.Batch())


def _owner() -> str | None:
    """The calling user; None for an internal caller (which sees every batch)."""
    principal = current_principal()
    return principal.user_id if principal else None


class BatchServicer(pb_grpc.BatchServiceServicer):
    def __init__(self, repo: BatchRepository, calls: Calls, queue: EventPublisher | None) -> None:
        self._repo = repo
        self._calls = calls
        self._queue = queue

    async def CreateBatch(self, request: pb.CreateBatchRequest, context: Any) -> pb.Batch:
        try:
            spec = domain.check_create(request.input_file_id, request.endpoint, request.completion_window,
                                       dict(request.metadata))
            owner = _owner()
            if owner is None:
                raise PermissionDenied("Batches are created by a user (an API key or a token).")
            try:
                purpose = await self._calls.file_purpose(spec.input_file_id)
            except grpc.aio.AioRpcError:
                raise Unavailable("The files service is unavailable; try again shortly") from None
            if purpose is None:
                raise domain.file_not_found(spec.input_file_id)
            if purpose != "batch":
                raise domain.wrong_purpose(spec.input_file_id, purpose)
        except ProtocolError as err:
            raise protocol_error(err) from None
        if self._queue is None:
            raise Unavailable("Batches need the job queue (Redis), which this deployment lacks")
        window_s = domain.WINDOWS[spec.completion_window]
        row = await self._repo.insert(domain.new_batch_id(), owner, principal_var.get(), spec.endpoint,
                                      spec.input_file_id, spec.completion_window, window_s, spec.metadata)
        try:
            await self._queue.publish(QUEUE, VALIDATE, {"batch_id": row.id})
        except Exception:
            log.exception("batch could not be queued", batch_id=row.id)
            await self._repo.fail_unqueued(row.id, "The batch could not be queued.")
            raise Unavailable("The batch queue is unavailable; try again shortly") from None
        return _message(row)

    async def _get(self, batch_id: str) -> BatchRow:
        row = await self._repo.get(_owner(), batch_id)
        if row is None:
            raise protocol_error(domain.batch_not_found(batch_id))
        return row

    async def GetBatch(self, request: pb.GetBatchRequest, context: Any) -> pb.Batch:
        return _message(await self._get(request.batch_id))

    async def CancelBatch(self, request: pb.CancelBatchRequest, context: Any) -> pb.Batch:
        row = await self._repo.cancel(_owner(), request.batch_id)
        if row is None:
            raise protocol_error(domain.batch_not_found(request.batch_id))
        if row.status not in ("cancelling", "cancelled"):
            raise protocol_error(domain.not_cancellable(row.status))
        return _message(row)

    async def ListBatches(self, request: pb.ListBatchesRequest, context: Any) -> pb.ListBatchesResponse:
        try:
            limit = domain.list_limit(request.limit if request.HasField("limit") else None)
        except ProtocolError as err:
            raise protocol_error(err) from None
        rows, more = await self._repo.list(_owner(), limit, request.after)
        return json_format.ParseDict({
            "object": "list", "data": [domain.render_batch(r) for r in rows],
            "first_id": rows[0].id if rows else None, "last_id": rows[-1].id if rows else None, "has_more": more,
        }, pb.ListBatchesResponse())
