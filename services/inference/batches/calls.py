"""The batch workers' calls to other services (docs/batches.md): input and output files through the files service's
gRPC API, and each line through the inference service's own `/v1` RPCs - the same parse, plan, engine, render
and usage ledger as live traffic - at batch priority.

Calls run as the batch's owner: the principal travels in the metadata as the gateway would set it (the files
service scopes files by it; the usage event names it). A line's request id is fixed per line
(domain.line_request_id), so a line re-run after a worker died is counted once by the ledger.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.api import httpbody_pb2
from google.rpc import error_details_pb2, status_pb2

from llmlab.files.v1 import files_service_pb2 as files_pb
from llmlab.files.v1 import files_service_pb2_grpc as files_grpc
from llmlab.inference.v1 import openai_service_pb2 as openai_pb
from llmlab.inference.v1 import openai_service_pb2_grpc as openai_grpc
from llmlab.runtime.context import principal_var, request_id_var
from llmlab.runtime.errors import HTTP_STATUS
from llmlab.runtime.interceptors import propagated_metadata

# Read by the inference servicer: requests so marked enter the engine in the batch class (engine.py "Priority").
PRIORITY_HEADER = "x-llmlab-priority"
BATCH_PRIORITY = (PRIORITY_HEADER, "batch")
# Refusals worth another try a little later (the engine's queue full, a model loading) rather than an error line.
RETRYABLE = {429, 503}


@contextlib.contextmanager
def acting_as(principal: str, request_id: str) -> Iterator[None]:
    """Run calls in this block for `principal` with `request_id` (what PropagatingClientInterceptor sends)."""
    p, r = principal_var.set(principal), request_id_var.set(request_id)
    try:
        yield
    finally:
        principal_var.reset(p)
        request_id_var.reset(r)


@dataclass(frozen=True)
class LineResult:
    status_code: int
    body: dict[str, Any]


def error_result(err: grpc.aio.AioRpcError) -> LineResult:
    """A refused call as OpenAI's error body and HTTP status, the way the gateway renders the serving family
    (gateway/errors.lua): message, `type` and `param` from the ErrorInfo metadata, `code` its reason in lower case."""
    code = err.code()
    status = HTTP_STATUS.get(code, 500)
    message, reason, meta = err.details() or "", None, {}
    for key, raw in err.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        st = status_pb2.Status.FromString(raw)
        message = st.message or message
        for detail in st.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                reason, meta = info.reason or None, dict(info.metadata)
    if meta.get("http_status", "").isdigit():
        status = int(meta["http_status"])
    if status >= 500 and reason is None:
        message = "The server had an error while processing your request."
    kind = meta.get("type") or {401: "authentication_error", 403: "permission_error",
                                 429: "rate_limit_error"}.get(status) or ("api_error" if status >= 500
                                                                          else "invalid_request_error")
    return LineResult(status, {"error": {"message": message, "type": kind, "param": meta.get("param"),
                                         "code": reason.lower() if reason else None}})


class Calls:
    def __init__(self, files: grpc.aio.Channel, inference: grpc.aio.Channel) -> None:
        self._files = files_grpc.FileServiceStub(files)
        self._openai = openai_grpc.OpenAIServiceStub(inference)

    async def file_purpose(self, file_id: str) -> str | None:
        """The purpose of the caller's file; None when it does not exist (for the caller)."""
        try:
            f = await self._files.GetFile(files_pb.GetFileRequest(file_id=file_id))
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return f.purpose

    async def read_file(self, file_id: str) -> bytes | None:
        data = bytearray()
        try:
            async for chunk in self._files.GetFileContent(files_pb.GetFileContentRequest(file_id=file_id)):
                data += chunk.data
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return bytes(data)

    async def store_file(self, owner: str, filename: str, content: bytes) -> str:
        reply = await self._files.StoreFile(files_pb.StoreFileRequest(
            owner_id=owner, filename=filename, purpose="batch_output", content_type="application/jsonl",
            content=content))
        return reply.file.id

    async def delete_file(self, file_id: str) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await self._files.DeleteFile(files_pb.DeleteFileRequest(file_id=file_id))

    async def run_line(self, endpoint: str, body: dict[str, Any]) -> LineResult:
        """One request through the inference service, answered as `/v1` would answer it. Raises AioRpcError when
        the service cannot be reached (the chunk is then retried as a whole)."""
        if body.get("stream"):
            return LineResult(400, {"error": {"message": "Streaming is not supported in batches ('stream' must be "
                                              "false or absent).", "type": "invalid_request_error",
                                              "param": "stream", "code": "unsupported_parameter"}})
        http = httpbody_pb2.HttpBody(content_type="application/json", data=json.dumps(body).encode())
        # Server-streaming calls get the owner and the line's request id passed explicitly (propagated_metadata).
        metadata = (*propagated_metadata().items(), BATCH_PRIORITY)
        if endpoint == "/v1/chat/completions":
            call = self._openai.CreateChatCompletion(openai_pb.CreateChatCompletionRequest(http_body=http),
                                                     metadata=metadata)
        else:
            call = self._openai.CreateCompletion(openai_pb.CreateCompletionRequest(http_body=http),
                                                 metadata=metadata)
        data = bytearray()
        try:
            async for frame in call:
                data += frame.data
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNAVAILABLE and not _has_details(err):
                raise  # the service itself is unreachable, not a refusal of this request
            return error_result(err)
        return LineResult(200, json.loads(bytes(data)))


def _has_details(err: grpc.aio.AioRpcError) -> bool:
    return any(k == "grpc-status-details-bin" for k, _ in (err.trailing_metadata() or ()))
