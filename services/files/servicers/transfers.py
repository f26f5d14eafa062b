"""TransferService: the signed upload and download URLs, authorised by their signature and expiry alone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2

from llmlab.files.v1 import transfers_service_pb2 as pb
from llmlab.files.v1 import transfers_service_pb2_grpc as pb_grpc
from llmlab.runtime import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from llmlab.runtime.envelope import value

from .. import rows
from ..ingest import Checker, RowsRefused, ingest
from ..repository import DatasetRow
from .common import Deps, body_chunks


def dataset_checker(dataset: DatasetRow) -> Checker:
    """How a dataset's file is checked row by row while it streams in (docs/files.md "Datasets")."""
    check = rows.schema_check(dataset.schema)
    if dataset.format == "json":
        return rows.JsonDocumentChecker(check)
    if dataset.format == "csv":
        return rows.CsvCounter()
    return rows.LineChecker(check, what="row")


def _gone() -> NotFound:
    return NotFound("Nothing is stored under this URL any more")


class TransferServicer(pb_grpc.TransferServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._d = deps

    async def PutSignedUpload(self, request_iterator: AsyncIterator[pb.PutSignedUploadRequest], context: Any
                              ) -> pb.PutSignedUploadResponse:
        first = await anext(request_iterator, None)
        if first is None:
            raise PermissionDenied("The URL's signature is invalid")
        self._d.signer.verify("PUT", first.token, "", first.expires, first.signature)
        slot = await self._d.repo.get_transfer(first.token, "upload")
        if slot is None:
            raise _gone()
        # The claim runs apart from this RPC: a client that goes away cancels the RPC at any await, even while the
        # claim is being written, and a claimed slot must then be given back (the same URL may be retried).
        claim = asyncio.ensure_future(self._d.repo.use_upload_slot(slot.token))
        try:
            if not await asyncio.shield(claim):
                raise AlreadyExists("This upload URL was already used; ask for a new one")
            dataset = await self._d.repo.get_dataset(None, slot.target_id)
            if dataset is None:
                raise _gone()
            checker = dataset_checker(dataset)
            key = f"datasets/{dataset.id}/{slot.token}"
            try:
                stored = await ingest(self._d.store, key, body_chunks(first, request_iterator), checker=checker,
                                      max_bytes=self._d.settings.max_file_bytes, size_param=None)
            except RowsRefused as exc:
                numbers = exc.checker.numbers()
                raise InvalidArgument(
                    f"The file was refused; the dataset keeps its previous data. {exc.checker.summary()}",
                    reason="VALIDATION_ERROR",
                    details={"failed_rows": numbers, "failed_count": getattr(exc.checker, "failed", len(numbers)),
                             "errors": [f"row {n}: {r}" if n else r for n, r in getattr(exc.checker, "failures", [])]},
                ) from None
        except BaseException:
            await asyncio.shield(self._give_back(claim, slot.token))
            raise
        content_type = first.http_body.content_type or slot.content_type
        try:
            old = await self._d.repo.replace_dataset_file(dataset.id, key, slot.filename, content_type, stored.size,
                                                          stored.rows, stored.sha256)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._d.store.delete(key)
            raise
        if old is not None:
            await self._d.store.delete(old)
        return pb.PutSignedUploadResponse(target="dataset", target_id=dataset.id, filename=slot.filename,
                                          content_type=content_type, size_bytes=stored.size,
                                          row_count=value(stored.rows))

    async def _give_back(self, claim: asyncio.Future[bool], token: str) -> None:
        """Release the slot if this request claimed it."""
        try:
            claimed = await claim
        except Exception:
            return
        if claimed:
            await self._d.repo.release_upload_slot(token)

    async def GetSignedDownload(self, request: pb.GetSignedDownloadRequest, context: Any
                                ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        self._d.signer.verify("GET", request.token, request.filename, request.expires, request.signature)
        grant = await self._d.repo.get_transfer(request.token, "download")
        if grant is None:
            raise _gone()
        if grant.target == "export":
            export = await self._d.repo.get_export(None, grant.target_id)
            if export is not None and export.status == "running":
                raise AlreadyExists(f"The export is still being prepared ({export.progress}% done); try again shortly",
                                    reason="EXPORT_NOT_READY", metadata={"progress": export.progress})
            if export is not None and export.status in ("failed", "cancelled"):
                raise FailedPrecondition(f"The export {export.status}; ask for a new one")
        if grant.blob_key is None:
            raise _gone()
        first = True
        try:
            async for chunk in self._d.store.read(grant.blob_key, self._d.settings.chunk_bytes):
                yield httpbody_pb2.HttpBody(content_type=grant.content_type if first else "", data=chunk)
                first = False
        except FileNotFoundError:
            raise _gone() from None
        if first:
            yield httpbody_pb2.HttpBody(content_type=grant.content_type, data=b"")
