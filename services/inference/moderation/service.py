"""`POST /v1/moderations` (docs/batches.md "Moderations"): the request checked as OpenAI does, then scored by our
classifier (classifier.py) for `text-moderation-latest` / `omni-moderation-latest` (and their `-stable` names), or
forwarded to a registered OpenAI-compatible upstream model's own `/moderations`."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from google.protobuf import json_format

from llmlab.inference.v1 import openai_service_pb2 as pb

from ..backends.upstream import UpstreamBackend
from ..models.manager import ModelManager
from ..models.registry import ModelNotFound
from ..openai.validation import ProtocolError, model_not_found
from . import classifier

BUILTIN = ("text-moderation-latest", "text-moderation-stable", "omni-moderation-latest",
           "omni-moderation-2024-09-26", "text-moderation-007")
DEFAULT_MODEL = "text-moderation-latest"
MAX_INPUTS = 32  # texts per request
MAX_CHARS = 32_768  # characters per text


def parse_input(value: Any) -> list[str]:
    """`input`: a string, an array of strings, or an array of `{"type": "text", "text": ...}` parts."""
    if value is None:
        raise ProtocolError("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ProtocolError("Invalid 'input': expected a non-empty string or array.", "input", "invalid_value")
    if len(items) > MAX_INPUTS:
        raise ProtocolError(f"Invalid 'input': at most {MAX_INPUTS} items per request.", "input", "invalid_value")
    texts = []
    for i, item in enumerate(items):
        where = "input" if not isinstance(value, list) else f"input[{i}]"
        if isinstance(item, dict) and item.get("type") == "text":
            item = item.get("text")
        if not isinstance(item, str):
            raise ProtocolError(f"Invalid type for '{where}': expected a string or a text part.", where,
                                "invalid_type")
        if not item.strip():
            raise ProtocolError(f"Invalid '{where}': the text is empty.", where, "invalid_value")
        if len(item) > MAX_CHARS:
            raise ProtocolError(f"Invalid '{where}': at most {MAX_CHARS} characters (got {len(item)}).", where,
                                "string_above_max_length")
        texts.append(item)
    return texts


def result(scores: dict[str, float]) -> dict[str, Any]:
    categories = {c: scores[c] >= classifier.THRESHOLD for c in classifier.CATEGORIES}
    return {"flagged": any(categories.values()), "categories": categories,
            "category_scores": {c: scores[c] for c in classifier.CATEGORIES}}


class Moderations:
    def __init__(self, models: ModelManager) -> None:
        self._models = models

    async def warm(self, stop: asyncio.Event) -> None:
        """Load (or train and cache) the classifier at start, off the event loop, not on the first request."""
        await asyncio.to_thread(classifier.load)

    async def moderate(self, request: pb.CreateModerationRequest) -> pb.CreateModerationResponse:
        value = json_format.MessageToDict(request.input) if request.HasField("input") else None
        texts = parse_input(value)
        model = request.model or DEFAULT_MODEL
        if model in BUILTIN:
            scores = await asyncio.to_thread(lambda: classifier.load().scores(texts))
            body = {"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": [result(s) for s in scores]}
        else:
            body = await self._upstream(model, texts)
        return json_format.ParseDict(body, pb.CreateModerationResponse(), ignore_unknown_fields=True)

    async def _upstream(self, model: str, texts: list[str]) -> dict[str, Any]:
        try:
            _, backend = await self._models.resolve(model)
        except ModelNotFound:
            raise model_not_found(model) from None
        if not isinstance(backend, UpstreamBackend):
            raise ProtocolError(f"The model `{model}` is not a moderation model; use text-moderation-latest, "
                                "omni-moderation-latest or a registered OpenAI-compatible upstream model.",
                                "model", "invalid_value")
        return await backend.moderate(texts)
