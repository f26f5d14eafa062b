"""DatasetService: `/datasets...` — metadata, signed upload/download URLs, versions."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from llmlab.common.v1 import common_pb2
from llmlab.files.v1 import datasets_service_pb2 as pb
from llmlab.files.v1 import datasets_service_pb2_grpc as pb_grpc
from llmlab.runtime import AlreadyExists, FailedPrecondition, NotFound
from llmlab.runtime.envelope import iso, value

from .. import domain
from ..repository import DatasetRow, TransferRow, VersionRow
from ..signing import new_token
from .common import Deps, base_url, expiry, owner_id

SYSTEM_OWNER = "system"


def _dataset(row: DatasetRow) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "format": row.format,
        "tags": row.tags,
        "size_bytes": value(row.size_bytes),
        "row_count": value(row.row_count),
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }
    return fields


def _fill_structs(msg: Any, row: DatasetRow) -> Any:
    if row.schema is not None:
        msg.schema.update(row.schema)
    msg.metadata.update(row.metadata)
    return msg


def _version(v: VersionRow) -> dict[str, Any]:
    return {
        "id": v.id,
        "dataset_id": v.dataset_id,
        "version": v.version,
        "description": v.description,
        "changelog": v.changelog,
        "size_bytes": value(v.size_bytes),
        "row_count": value(v.row_count),
        "sha256": v.sha256,
        "created_at": iso(v.created_at),
    }


def _links(path: str, limit: int, offset: int, total: int) -> common_pb2.PageLinks:
    last = max(0, (total - 1) // limit * limit) if total else 0
    nxt = offset + limit
    return common_pb2.PageLinks(
        self=f"{path}?limit={limit}&offset={offset}",
        next=value(f"{path}?limit={limit}&offset={nxt}" if nxt < total else None),
        first=f"{path}?limit={limit}&offset=0",
        last=f"{path}?limit={limit}&offset={last}",
    )


class DatasetServicer(pb_grpc.DatasetServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self._d = deps

    async def _get(self, dataset_id: str) -> DatasetRow:
        dataset_id = domain.parse_uuid(dataset_id)
        row = await self._d.repo.get_dataset(owner_id(), dataset_id)
        if row is None:
            raise domain.dataset_not_found(dataset_id)
        return row

    async def CreateDataset(self, request: pb.CreateDatasetRequest, context: Any) -> pb.CreateDatasetResponse:
        new = domain.new_dataset(
            name=request.name,
            description=request.description,
            fmt=request.format,
            schema=json_format.MessageToDict(request.schema) if request.HasField("schema") else None,
            tags=list(request.tags),
            metadata=json_format.MessageToDict(request.metadata) if request.HasField("metadata") else {},
        )
        row = await self._d.repo.create_dataset(owner_id() or SYSTEM_OWNER, new.name, new.description, new.format,
                                                new.schema, new.tags, new.metadata)
        return _fill_structs(pb.CreateDatasetResponse(**_dataset(row)), row)

    async def ListDatasets(self, request: pb.ListDatasetsRequest, context: Any) -> pb.ListDatasetsResponse:
        limit = domain.list_limit(request.limit if request.HasField("limit") else None, 20, 100)
        offset = domain.offset_of(request.offset if request.HasField("offset") else None)
        rows, total = await self._d.repo.list_datasets(owner_id(), limit, offset)
        return pb.ListDatasetsResponse(
            data=[_fill_structs(pb.Dataset(**_dataset(r)), r) for r in rows],
            pagination=common_pb2.OffsetPagination(total=total, limit=limit, offset=offset,
                                                   has_more=offset + len(rows) < total),
            links=_links("/datasets", limit, offset, total),
        )

    async def GetDataset(self, request: pb.GetDatasetRequest, context: Any) -> pb.GetDatasetResponse:
        row = await self._get(request.dataset_id)
        return _fill_structs(pb.GetDatasetResponse(**_dataset(row)), row)

    async def CreateDatasetUploadUrl(self, request: pb.CreateDatasetUploadUrlRequest, context: Any
                                     ) -> pb.CreateDatasetUploadUrlResponse:
        row = await self._get(request.dataset_id)
        expires, expires_at, at = expiry(self._d.settings)
        token = new_token()
        await self._d.repo.insert_transfer(TransferRow(
            token=token, direction="upload", target="dataset", target_id=row.id, blob_key=None,
            filename=domain.safe_filename(request.filename, f"dataset.{row.format}"),
            content_type=request.content_type or "application/jsonl", expires_at=at, used_at=None,
        ))
        url = self._d.signer.upload_url(base_url(self._d.settings, context), token, expires)
        return pb.CreateDatasetUploadUrlResponse(upload_url=url, expires_at=expires_at)

    async def GetDatasetDownloadUrl(self, request: pb.GetDatasetDownloadUrlRequest, context: Any
                                    ) -> pb.GetDatasetDownloadUrlResponse:
        row = await self._get(request.dataset_id)
        if request.version:
            version = await self._d.repo.get_version(row.id, request.version)
            if version is None:
                raise NotFound(f"Dataset {row.id} has no version {domain.excerpt(request.version)}")
            key, filename, content_type = version.blob_key, version.filename, version.content_type
        else:
            if row.blob_key is None:
                raise NotFound(f"Dataset with ID {row.id} has no file yet; upload one first")
            key, filename, content_type = row.blob_key, row.filename or "dataset", row.content_type or ""
        expires, expires_at, at = expiry(self._d.settings)
        token = new_token()
        await self._d.repo.insert_transfer(TransferRow(
            token=token, direction="download", target="dataset", target_id=row.id, blob_key=key,
            filename=filename, content_type=content_type or "application/octet-stream", expires_at=at, used_at=None,
        ))
        url = self._d.signer.download_url(base_url(self._d.settings, context), token, filename, expires)
        return pb.GetDatasetDownloadUrlResponse(download_url=url, expires_at=expires_at)

    async def CreateDatasetVersion(self, request: pb.CreateDatasetVersionRequest, context: Any
                                   ) -> pb.CreateDatasetVersionResponse:
        row = await self._get(request.dataset_id)
        label = domain.version_label(request.version)
        if row.blob_key is None:
            raise FailedPrecondition("Cannot create a version: the dataset has no file yet")
        version = await self._d.repo.create_version(row, label, request.description, request.changelog)
        if version is None:
            existing = await self._d.repo.get_version(row.id, label)
            raise AlreadyExists(f"Dataset {row.id} already has version {label}",
                                metadata={"existing_id": existing.id if existing else ""})
        return pb.CreateDatasetVersionResponse(**_version(version))

    async def ListDatasetVersions(self, request: pb.ListDatasetVersionsRequest, context: Any
                                  ) -> pb.ListDatasetVersionsResponse:
        row = await self._get(request.dataset_id)
        limit = domain.list_limit(request.limit if request.HasField("limit") else None, 20, 100)
        offset = domain.offset_of(request.offset if request.HasField("offset") else None)
        versions, total = await self._d.repo.list_versions(row.id, limit, offset)
        return pb.ListDatasetVersionsResponse(
            data=[pb.DatasetVersion(**_version(v)) for v in versions],
            pagination=common_pb2.OffsetPagination(total=total, limit=limit, offset=offset,
                                                   has_more=offset + len(versions) < total),
            links=_links(f"/datasets/{row.id}/versions", limit, offset, total),
        )
