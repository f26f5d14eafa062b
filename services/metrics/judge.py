"""The optional LLM judge: a registered model grades a response on the six dimensions with a rationale each.

The judge runs through the inference service's InferenceService.Generate (any registered model: the embedded one or
an OpenAI-compatible upstream), greedy, with a fixed rubric. Its verdict is stored beside the measured scores and
never replaces them; a judge that fails, times out or answers something unparsable leaves the measured scores alone.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import grpc
import structlog

from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.runtime.errors import excerpt

from .scoring import DIMENSIONS

log = structlog.get_logger(__name__)

RUBRIC = """You grade an AI assistant's response to a prompt. Score each dimension from 0 (very poor) to 100
(excellent) and justify each score in one short sentence.
- coherence: logical flow, consistency, smooth transitions
- completeness: answers every part of the prompt; not cut off
- readability: easy to read, clear sentences
- creativity: original, varied vocabulary and ideas
- specificity: concrete details instead of vague statements
- length_appropriateness: length fits what the prompt asks for
Answer with one JSON object only, no other text, exactly in this form:
{"coherence": {"score": 0, "rationale": "..."}, "completeness": {"score": 0, "rationale": "..."},
 "readability": {"score": 0, "rationale": "..."}, "creativity": {"score": 0, "rationale": "..."},
 "specificity": {"score": 0, "rationale": "..."}, "length_appropriateness": {"score": 0, "rationale": "..."}}"""
MAX_TEXT_CHARS = 12_000  # of the prompt and of the response shown to the judge
RATIONALE_CHARS = 300
_OBJECT = re.compile(r"\{.*\}", re.S)


@dataclass(frozen=True)
class Verdict:
    """The judge's score and rationale per dimension it answered for, and which model judged."""

    model: str
    dimensions: dict[str, dict[str, Any]]


def parse_verdict(text: str) -> dict[str, dict[str, Any]]:
    """The dimensions a judge's answer scores validly: {dimension: {score 0..100, rationale}}; {} when none."""
    match = _OBJECT.search(text)
    if not match:
        return {}
    try:
        raw = json.loads(match.group(0))
    except ValueError:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for d in DIMENSIONS:
        item = raw.get(d) if isinstance(raw, dict) else None
        if not isinstance(item, dict):
            continue
        score = item.get("score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
            continue
        if not 0 <= score <= 100:
            continue
        rationale = item.get("rationale")
        out[d] = {"score": round(float(score), 1),
                  "rationale": excerpt(rationale.strip(), RATIONALE_CHARS) if isinstance(rationale, str) else ""}
    return out


class Judge:
    """Asks the configured model for a verdict."""

    def __init__(self, channel: grpc.aio.Channel, model: str, max_tokens: int, timeout: float) -> None:
        self._stub = inf_grpc.InferenceServiceStub(channel)
        self.model = model
        self._max_tokens = max_tokens
        self._timeout = timeout

    async def verdict(self, content: str, prompt: str) -> Verdict | None:
        question = (f"PROMPT:\n{prompt[:MAX_TEXT_CHARS]}\n\nRESPONSE:\n{content[:MAX_TEXT_CHARS]}\n\n"
                    "Grade the RESPONSE. JSON only.")
        try:
            reply = await self._stub.Generate(inf.GenerateRequest(
                model=self.model,
                messages=[inf.ChatMessage(role="system", content=RUBRIC),
                          inf.ChatMessage(role="user", content=question)],
                sampling=inf.SamplingParams(temperature=0.0, max_tokens=self._max_tokens),  # greedy: reproducible
            ), timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning("judge unavailable; measured scores only", model=self.model, status=exc.code().name)
            return None
        dims = parse_verdict(reply.choices[0].text if reply.choices else "")
        if not dims:
            log.warning("judge answer not usable; measured scores only", model=self.model)
            return None
        return Verdict(reply.model or self.model, dims)
