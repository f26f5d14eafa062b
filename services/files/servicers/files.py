"""FileService: OpenAI's files API (`/v1/files...`) over the blob store."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from google.api import httpbody_pb2

from llmlab.files.v1 import files_service_pb2 as pb
from llmlab.files.v1 import files_service_pb2_grpc as pb_grpc
from llmlab.runtime import validation_error
from llmlab.runtime.envelope import value

from .. import domain, rows
from ..ingest import RowsRefused, Stored, empty_file, ingest
from ..multipart import MultipartReader
from ..repository import FileRow
from .common import Deps, body_chunks, owner_id

MAX_PURPOSE_BYTES = 64
SYSTEM_OWNER = "system"  # files created by internal callers that name no user


def _fields(row: FileRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "file",
        "bytes": row.bytes,
        "created_at": int(row.created_at.timestamp()),
        "filename": row.filename,
        "purpose": row.purpose,
        "status": row.status,
        "status_details": value(row.status_details),
    }


def _refused(purpose: str, checker: Any) -> Exception:
    return domain.serving_error(
        f"Invalid file for purpose '{purpose}' (JSONL expected): {checker.summary()}", "file", "invalid_file_format"
    )


class FileServicer(pb_grpc.FileServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._d = deps

    async def _part_text(self, reader: MultipartReader, name: str) -> str:
        data = bytearray()
        while (chunk := await reader.read()) is not None:
            data += chunk
            if len(data) > MAX_PURPOSE_BYTES:
                raise validation_error(name, bytes(data[:40]).decode("utf-8", "replace"), "is too long")
        return data.decode("utf-8", "replace").strip()

    async def _check_stored(self, key: str, purpose: str) -> None:
        """Purpose sent after the file part: its lines are checked from the store, once."""
        check = rows.PURPOSE_CHECKS.get(purpose)
        if check is None:
            return
        checker = rows.LineChecker(check)
        async for chunk in self._d.store.read(key, self._d.settings.chunk_bytes):
            checker.feed(chunk)
        checker.finish()
        if not checker.ok:
            raise _refused(purpose, checker)

    async def CreateFile(self, request_iterator: AsyncIterator[pb.CreateFileRequest], context: Any
                         ) -> pb.CreateFileResponse:
        first = await anext(request_iterator, None)
        if first is None:
            raise validation_error("body", "", "must be a multipart/form-data body")
        reader = MultipartReader(body_chunks(first, request_iterator), first.http_body.content_type)
        file_id = domain.new_file_id()
        key = f"files/{file_id}"
        purpose: str | None = None
        stored: Stored | None = None
        filename = "file"
        content_type = "application/octet-stream"
        checked = False
        try:
            while (part := await reader.next_part()) is not None:
                if part.name == "purpose":
                    purpose = domain.check_purpose(await self._part_text(reader, "purpose"))
                elif part.name == "file" and stored is None:
                    filename = domain.safe_filename(part.filename or "file")
                    content_type = part.content_type
                    check = rows.PURPOSE_CHECKS.get(purpose or "")
                    checker = rows.LineChecker(check) if check else None

                    async def data() -> AsyncIterator[bytes]:
                        while (chunk := await reader.read()) is not None:
                            yield chunk

                    try:
                        stored = await ingest(self._d.store, key, data(), checker=checker,
                                              max_bytes=self._d.settings.max_file_bytes)
                    except RowsRefused as exc:
                        raise _refused(purpose or "", exc.checker) from None
                    checked = checker is not None
                else:
                    while await reader.read() is not None:
                        pass
            if purpose is None:
                raise domain.serving_error("Missing required parameter: 'purpose'", "purpose", "missing_parameter")
            if stored is None:
                raise domain.serving_error("Missing required parameter: 'file'", "file", "missing_parameter")
            if stored.size == 0:
                raise empty_file()
            if not checked:
                await self._check_stored(key, purpose)
            row = await self._d.repo.insert_file(FileRow(
                id=file_id, owner_id=owner_id() or SYSTEM_OWNER, filename=filename, purpose=purpose,
                content_type=content_type, bytes=stored.size, status="uploaded", status_details=None,
                blob_key=key, created_at=None,  # type: ignore[arg-type]
            ))
        except BaseException:
            if stored is not None:
                with contextlib.suppress(Exception):
                    await self._d.store.delete(key)
            raise
        return pb.CreateFileResponse(**_fields(row))

    async def ListFiles(self, request: pb.ListFilesRequest, context: Any) -> pb.ListFilesResponse:
        limit = domain.list_limit(request.limit if request.HasField("limit") else None, 10000, 10000)
        order = request.order or "desc"
        if order not in ("asc", "desc"):
            raise domain.serving_error("order must be 'asc' or 'desc'", "order")
        if request.purpose and request.purpose not in domain.UPLOAD_PURPOSES + domain.PLATFORM_PURPOSES:
            domain.check_purpose(request.purpose)
        rows_, more = await self._d.repo.list_files(owner_id(), request.purpose, limit, request.after, order)
        return pb.ListFilesResponse(object="list", data=[pb.File(**_fields(r)) for r in rows_], has_more=more)

    async def _get(self, file_id: str) -> FileRow:
        row = await self._d.repo.get_file(owner_id(), file_id)
        if row is None:
            raise domain.file_not_found(file_id)
        return row

    async def GetFile(self, request: pb.GetFileRequest, context: Any) -> pb.GetFileResponse:
        return pb.GetFileResponse(**_fields(await self._get(request.file_id)))

    async def DeleteFile(self, request: pb.DeleteFileRequest, context: Any) -> pb.DeleteFileResponse:
        row = await self._d.repo.delete_file(owner_id(), request.file_id)
        if row is None:
            raise domain.file_not_found(request.file_id)
        await self._d.store.delete(row.blob_key)
        return pb.DeleteFileResponse(id=row.id, object="file", deleted=True)

    async def GetFileContent(self, request: pb.GetFileContentRequest, context: Any
                             ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        row = await self._get(request.file_id)
        first = True
        try:
            async for chunk in self._d.store.read(row.blob_key, self._d.settings.chunk_bytes):
                yield httpbody_pb2.HttpBody(content_type=row.content_type if first else "", data=chunk)
                first = False
        except FileNotFoundError:
            raise domain.file_not_found(request.file_id) from None
        if first:
            yield httpbody_pb2.HttpBody(content_type=row.content_type, data=b"")

    async def StoreFile(self, request: pb.StoreFileRequest, context: Any) -> pb.StoreFileResponse:
        if not request.owner_id:
            raise validation_error("owner_id", "", "is required")
        file_id = domain.new_file_id()
        key = f"files/{file_id}"

        async def data() -> AsyncIterator[bytes]:
            yield request.content

        stored = await ingest(self._d.store, key, data(), max_bytes=self._d.settings.max_file_bytes)
        try:
            row = await self._d.repo.insert_file(FileRow(
                id=file_id, owner_id=request.owner_id, filename=domain.safe_filename(request.filename),
                purpose=request.purpose or "batch_output", content_type=request.content_type or "application/jsonl",
                bytes=stored.size, status="processed", status_details=None, blob_key=key,
                created_at=None,  # type: ignore[arg-type]
            ))
        except BaseException:
            await self._d.store.delete(key)
            raise
        return pb.StoreFileResponse(file=pb.File(**_fields(row)))
