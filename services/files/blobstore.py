"""One small interface for bytes that are not rows: the local filesystem by default, any S3-compatible store.

Writes stream: a writer takes chunks and makes the object visible only when its `async with` block ends without
an error (a rename on the filesystem, CompleteMultipartUpload on S3); an error or a cancelled RPC discards what
was written, so a half-finished upload leaves nothing behind. Reads stream in chunks. Memory per transfer is one
chunk on the filesystem and one multipart part (5 MiB) on S3, whatever the object's size.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import pathlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

from .settings import FilesSettings

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
S3_PART_BYTES = 5 * 1024 * 1024  # S3's least part size (every part but the last); fewer bytes held per upload


def check_key(key: str) -> str:
    """Keys are made by the service (ids and safe names); anything else is a bug, never a path to follow."""
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"unsafe blob key {key!r}")
    return key


class BlobWriter(abc.ABC):
    """Receives an object's bytes in order."""

    @abc.abstractmethod
    async def write(self, data: bytes) -> None: ...


class BlobStore(abc.ABC):
    """Where the files service keeps bytes."""

    name: str

    @abc.abstractmethod
    def writer(self, key: str) -> contextlib.AbstractAsyncContextManager[BlobWriter]:
        """An object written chunk by chunk; visible under `key` once the block ends cleanly."""

    @abc.abstractmethod
    def read(self, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        """The object's bytes in chunks of at most `chunk_bytes`. FileNotFoundError when absent."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove the object; absent is fine."""

    async def put(self, key: str, data: bytes) -> None:
        async with self.writer(key) as w:
            await w.write(data)

    async def get(self, key: str) -> bytes:
        return b"".join([chunk async for chunk in self.read(key, 1024 * 1024)])

    async def close(self) -> None:
        return None


class _FileWriter(BlobWriter):
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def write(self, data: bytes) -> None:
        await asyncio.to_thread(self._handle.write, data)


class FilesystemStore(BlobStore):
    """Objects as files under one root; a temporary file renamed into place on commit."""

    name = "fs"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = pathlib.Path(root).resolve()
        self._tmp = self.root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> pathlib.Path:
        return self.root / check_key(key)

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[BlobWriter]:
        final = self._path(key)
        tmp = self._tmp / uuid.uuid4().hex
        handle = await asyncio.to_thread(open, tmp, "wb")
        try:
            yield _FileWriter(handle)
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
            await asyncio.to_thread(os.replace, tmp, final)
        finally:
            if not handle.closed:
                await asyncio.to_thread(handle.close)
            with contextlib.suppress(FileNotFoundError):
                await asyncio.to_thread(tmp.unlink)

    async def read(self, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_bytes):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self._path(key).unlink)


class _S3Writer(BlobWriter):
    """Multipart upload in parts of at least S3_PART_BYTES; one PutObject when the object is smaller than a part.

    Chunks are kept as they came and joined once per part: growing one bytearray reallocated and copied it at every
    chunk, and slicing a part off copied it again (RSS grew 66 MB for a 200 MB upload; see docs/files.md).
    """

    def __init__(self, client: Any, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def _take(self) -> bytes:
        part = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return part

    async def write(self, data: bytes) -> None:
        self._chunks.append(bytes(data))
        self._buffered += len(data)
        if self._buffered >= S3_PART_BYTES:
            await self._upload_part(self._take())

    async def _upload_part(self, part: bytes) -> None:
        if self._upload_id is None:
            created = await self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = created["UploadId"]
        number = len(self._parts) + 1
        answer = await self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=part
        )
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    async def commit(self) -> None:
        if self._upload_id is None:
            await self._client.put_object(Bucket=self._bucket, Key=self._key, Body=self._take())
            return
        if self._chunks:
            await self._upload_part(self._take())
        await self._client.complete_multipart_upload(
            Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
        )

    async def abort(self) -> None:
        self._take()
        if self._upload_id is not None:
            await self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._upload_id)


class S3Store(BlobStore):
    """Any S3-compatible object store through aiobotocore (AWS S3, MinIO, Ceph RGW, moto's server)."""

    name = "s3"

    def __init__(self, client: Any, exit_stack: contextlib.AsyncExitStack, bucket: str, prefix: str = "") -> None:
        self._client, self._stack, self.bucket = client, exit_stack, bucket
        self._prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    @classmethod
    async def connect(cls, *, bucket: str, endpoint_url: str = "", region: str = "us-east-1",
                      access_key_id: str = "", secret_access_key: str = "", prefix: str = "") -> S3Store:
        """A client for the store's life; the bucket is created when it does not exist yet."""
        from aiobotocore.session import get_session  # imported only when S3 is chosen: it pulls aiohttp in

        stack = contextlib.AsyncExitStack()
        kwargs: dict[str, Any] = {"region_name": region}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        if access_key_id:
            kwargs.update(aws_access_key_id=access_key_id, aws_secret_access_key=secret_access_key)
        client = await stack.enter_async_context(get_session().create_client("s3", **kwargs))
        try:
            await client.head_bucket(Bucket=bucket)
        except client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
                await stack.aclose()
                raise
            await client.create_bucket(Bucket=bucket)
        return cls(client, stack, bucket, prefix)

    def _key(self, key: str) -> str:
        return self._prefix + check_key(key)

    @contextlib.asynccontextmanager
    async def writer(self, key: str) -> AsyncIterator[BlobWriter]:
        w = _S3Writer(self._client, self.bucket, self._key(key))
        try:
            yield w
        except BaseException:
            await asyncio.shield(w.abort())
            raise
        await w.commit()

    async def read(self, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        try:
            answer = await self._client.get_object(Bucket=self.bucket, Key=self._key(key))
        except self._client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(chunk_bytes):
                yield chunk

    async def delete(self, key: str) -> None:
        await self._client.delete_object(Bucket=self.bucket, Key=self._key(key))

    async def close(self) -> None:
        await self._stack.aclose()


async def open_store(settings: FilesSettings) -> BlobStore:
    """The store the settings choose."""
    if settings.blob_backend == "s3":
        return await S3Store.connect(
            bucket=settings.s3_bucket, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region,
            access_key_id=settings.s3_access_key_id, secret_access_key=settings.s3_secret_access_key,
            prefix=settings.s3_prefix,
        )
    return FilesystemStore(pathlib.Path(settings.data_dir) / "files")
