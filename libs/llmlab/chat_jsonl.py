"""Chat examples as JSONL (OpenAI's fine-tuning format, one `{"messages": [...]}` per line): the one check of such a
file, with a report of every bad line by number. Training files (services/inference/training) and evaluation sets
(services/metrics/evaluation.py) are read through it; `read_file` fetches one from the files service."""

from __future__ import annotations

import json
from dataclasses import dataclass

import grpc

from llmlab.files.v1 import files_service_pb2 as files_pb
from llmlab.files.v1 import files_service_pb2_grpc as files_grpc
from llmlab.runtime import InvalidArgument, NotFound, Unavailable, validation_error

MAX_EXAMPLES = 50_000
MAX_REPORTED = 20  # bad lines listed in one error
ROLES = ("system", "user", "assistant")
FINE_TUNE_PURPOSE = "fine-tune"


@dataclass
class Examples:
    jsonl: str  # one normalised {"messages": [...]} per line
    count: int
    assistant_chars: int


def parse_examples(text: str, field: str) -> Examples:
    """A chat JSONL file (OpenAI's fine-tuning format) checked line by line; every bad line is reported with its
    number (the first MAX_REPORTED of them)."""
    problems: list[str] = []
    lines: list[str] = []
    chars = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        why = _example_problem(line)
        if why is not None:
            problems.append(f"line {number}: {why}")
            continue
        messages = [{"role": m["role"], "content": m["content"]} for m in as_messages(json.loads(line))]
        chars += sum(len(m["content"]) for m in messages if m["role"] == "assistant")
        lines.append(json.dumps({"messages": messages}, ensure_ascii=False))
    if problems:
        shown = problems[:MAX_REPORTED]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise InvalidArgument(
            f"The {field} has {len(problems)} invalid line(s): {'; '.join(shown)}{more}",
            reason="INVALID_TRAINING_FILE",
            details={"field": field, "errors": shown, "invalid_lines": len(problems)},
            field_violations=[(field, p) for p in shown],
        )
    if not lines:
        raise validation_error(field, "", "must hold at least one example (JSONL of {\"messages\": [...]})")
    if len(lines) > MAX_EXAMPLES:
        raise validation_error(field, len(lines), f"must hold at most {MAX_EXAMPLES} examples")
    return Examples("\n".join(lines) + "\n", len(lines), chars)


def as_messages(obj: dict) -> list:
    """The chat of a line: its `messages`, or OpenAI's legacy `prompt`/`completion` pair as a user and an assistant
    turn."""
    if "messages" not in obj and isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": obj["completion"]}]
    return obj.get("messages")  # type: ignore[return-value]


def _example_problem(line: str) -> str | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg})"
    if isinstance(obj, dict):
        obj = {"messages": as_messages(obj)}
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return "expected an object with a non-empty \"messages\" array"
    for i, m in enumerate(obj["messages"]):
        if not isinstance(m, dict):
            return f"messages[{i}] is not an object"
        if m.get("role") not in ROLES:
            return f"messages[{i}].role must be one of {', '.join(ROLES)}"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content must be a string"
        if "\x00" in m["content"]:
            return f"messages[{i}].content contains a NUL character"
    if not any(m["role"] == "assistant" and m["content"].strip() for m in obj["messages"]):
        return "no assistant message to learn from"
    return None


async def read_file(channel: grpc.aio.Channel, file_id: str, field: str, purpose: str = FINE_TUNE_PURPOSE) -> str:
    """A file's text from the files service, checked to have `purpose` (the caller's own files only: the principal
    travels with the call). NotFound / a validation error naming `field` otherwise."""
    stub = files_grpc.FileServiceStub(channel)
    try:
        meta = await stub.GetFile(files_pb.GetFileRequest(file_id=file_id), timeout=10)
    except grpc.aio.AioRpcError as exc:
        if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise NotFound(f"No such file: '{file_id}'", reason="FILE_NOT_FOUND", metadata={"param": field},
                           details={"field": field, "value": file_id}) from None
        raise Unavailable("The files service could not be reached; try again shortly") from None
    if meta.purpose != purpose:
        raise validation_error(field, file_id, f"must be a file with purpose '{purpose}', not '{meta.purpose}'",
                               f"File '{file_id}' has purpose '{meta.purpose}'; this needs purpose '{purpose}'")
    chunks = []
    try:
        async for part in stub.GetFileContent(files_pb.GetFileContentRequest(file_id=file_id), timeout=60):
            chunks.append(part.data)
    except grpc.aio.AioRpcError:
        raise Unavailable(f"The file '{file_id}' could not be read; try again shortly") from None
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise validation_error(field, file_id, "must be UTF-8 JSONL") from None
