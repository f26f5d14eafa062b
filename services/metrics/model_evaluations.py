"""Model evaluations (`POST /api/models/{id}/evaluate`, `GET /api/evaluations`; docs/training.md "Evaluation").

Each example of the evaluation set is a chat whose last assistant message is the reference answer. Per example,
through the inference service's InferenceService.Generate:

- the model answers the turns before the reference (greedy, at most MAX_TOKENS tokens): BLEU (sacreBLEU corpus),
  ROUGE-L F1 (mean), response_diversity (distinct-2 over all answers), avg_response_length (words);
- the reference itself is scored with the engine's prompt logprobs: the chat rendered with the reference as the
  assistant turn, minus the rendering without it, leaves the reference's tokens up to the end-of-turn token.
  perplexity = exp(-mean logprob) over all reference tokens of the set (lower: the model expects the answers).

The built-in set is data/evaluation_default.jsonl: 12 short general questions written for this project, none of
them in the training worker's built-in instruction set.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import re
from dataclasses import dataclass
from typing import Any

import asyncpg
import grpc

from llmlab.chat_jsonl import parse_examples, read_file
from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.metrics.v1 import evaluation_service_pb2 as pb
from llmlab.runtime import Internal, NotFound, Unavailable, validation_error
from llmlab.runtime.envelope import iso, meta, pagination
from llmlab.runtime.errors import excerpt

from .reference import Sample, compute

DEFAULT_SET = pathlib.Path(__file__).with_name("data") / "evaluation_default.jsonl"
DEFAULT_NAME = "Standard Evaluation"
MAX_TOKENS = 48
CONCURRENCY = 8
MAX_EXAMPLES = 200
_SPECIAL = re.compile(r"^(<\|[^|]+\|>|</s>|<eos>|<end_of_turn>)$")


@dataclass
class Example:
    context: list[dict[str, str]]
    reference: str


def examples_of(jsonl: str) -> list[Example]:
    out = []
    for line in jsonl.splitlines():
        messages = json.loads(line)["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        out.append(Example(messages[:last], messages[last]["content"]))
    return out


def reference_logprobs(without: list[Any], with_ref: list[Any]) -> list[float]:
    """The logprobs of the reference's tokens: those of the rendering with the reference past the rendering
    without it, through the first special (end-of-turn) token."""
    out: list[float] = []
    for tok in with_ref[len(without):]:
        out.append(tok.logprob)
        if _SPECIAL.match(tok.token):
            break
    return out


class Evaluator:
    def __init__(self, inference: grpc.aio.Channel) -> None:
        self._stub = inf_grpc.InferenceServiceStub(inference)

    async def _generate(self, model: str, messages: list[dict[str, str]], max_tokens: int) -> inf.GenerateResponse:
        return await self._stub.Generate(inf.GenerateRequest(
            model=model, messages=[inf.ChatMessage(role=m["role"], content=m["content"]) for m in messages],
            sampling=inf.SamplingParams(temperature=0.0, max_tokens=max_tokens), prompt_logprobs=True,
            user="evaluation"), timeout=120)

    async def sample(self, model: str, ex: Example) -> Sample:
        answer = await self._generate(model, ex.context, MAX_TOKENS)
        scored = await self._generate(model, [*ex.context, {"role": "assistant", "content": ex.reference}], 1)
        logprobs = reference_logprobs(list(answer.prompt_logprobs), list(scored.prompt_logprobs))
        return Sample(prediction=answer.choices[0].text.strip(), references=[ex.reference], token_logprobs=logprobs)

    async def evaluate(self, model: str, examples: list[Example]) -> dict[str, float | None]:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(ex: Example) -> Sample:
            async with gate:
                return await self.sample(model, ex)

        try:
            samples = await asyncio.gather(*(one(ex) for ex in examples))
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"Model '{excerpt(model, 80)}' not found", reason="MODEL_NOT_FOUND") from None
            if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.FAILED_PRECONDITION):
                raise Unavailable(f"Model '{excerpt(model, 80)}' cannot generate now: {exc.details()}") from None
            raise Internal("The evaluation could not be completed", reason="EVALUATION_FAILED") from None
        r = compute(samples)
        return {"perplexity": r.perplexity, "bleu_score": r.bleu or 0.0, "rouge_score": r.rouge_l or 0.0,
                "response_diversity": r.response_diversity, "avg_response_length": r.avg_response_length}


class ModelEvaluationRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def insert(self, model_id: str, eval_name: str, dataset: str | None, examples: int,
                     m: dict[str, float | None]) -> asyncpg.Record:
        return await self._pool.fetchrow(
            "INSERT INTO model_evaluations (model_id, eval_name, dataset, examples, perplexity, bleu_score,"
            " rouge_score, response_diversity, avg_response_length) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " RETURNING *", model_id, eval_name, dataset, examples, m["perplexity"], m["bleu_score"],
            m["rouge_score"], m["response_diversity"], m["avg_response_length"])

    async def list(self, model_id: str | None, limit: int, offset: int) -> tuple[list[asyncpg.Record], int]:
        rows = await self._pool.fetch(
            "SELECT * FROM model_evaluations WHERE ($1::text IS NULL OR model_id = $1)"
            " ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3", model_id, limit, offset)
        total = await self._pool.fetchval(
            "SELECT count(*) FROM model_evaluations WHERE ($1::text IS NULL OR model_id = $1)", model_id)
        return rows, int(total)


def _round(v: float | None) -> float | None:
    return round(v, 4) if v is not None else None


class ModelEvaluationServicer:
    """The model-evaluation RPCs; the research family's run evaluations stay the base class's (501)."""

    def __init__(self, repo: ModelEvaluationRepository, evaluator: Evaluator, files: grpc.aio.Channel) -> None:
        self._repo, self._evaluator, self._files = repo, evaluator, files

    async def EvaluateModel(self, request: pb.EvaluateModelRequest, context: Any) -> pb.EvaluateModelResponse:
        if not request.model_id:
            raise validation_error("model_id", "", "is required")
        for field in ("model_id", "eval_name", "dataset"):
            if "\x00" in getattr(request, field):
                raise validation_error(field, getattr(request, field), "must not contain NUL characters")
        name = request.eval_name.strip() or DEFAULT_NAME
        if len(name) > 255:
            raise validation_error("eval_name", excerpt(name, 80), "must be at most 255 characters")
        if request.dataset:
            text = await read_file(self._files, request.dataset, "dataset")
            examples = examples_of(parse_examples(text, "dataset").jsonl)
            if len(examples) > MAX_EXAMPLES:
                raise validation_error("dataset", len(examples), f"must hold at most {MAX_EXAMPLES} examples")
        else:
            examples = examples_of(DEFAULT_SET.read_text())
        metrics = await self._evaluator.evaluate(request.model_id, examples)
        row = await self._repo.insert(request.model_id, name, request.dataset or None, len(examples), metrics)
        return pb.EvaluateModelResponse(success=True, data=pb.EvaluateModelData(
            id=row["id"], model_id=row["model_id"], eval_name=row["eval_name"],
            metrics=pb.EvaluationMetrics(perplexity=_round(row["perplexity"]), bleu_score=_round(row["bleu_score"]),
                                         rouge_score=_round(row["rouge_score"]),
                                         response_diversity=_round(row["response_diversity"]),
                                         avg_response_length=round(row["avg_response_length"], 1)),
            message="Evaluation completed successfully"), meta=meta())

    async def ListEvaluations(self, request: pb.ListEvaluationsRequest, context: Any) -> pb.ListEvaluationsResponse:
        if "\x00" in request.model_id:
            raise validation_error("model_id", request.model_id, "must not contain NUL characters")
        page = request.page if request.HasField("page") else 1
        limit = request.limit if request.HasField("limit") else 20
        if page < 1:
            raise validation_error("page", page, "must be at least 1")
        if not 1 <= limit <= 100:
            raise validation_error("limit", limit, "must be between 1 and 100")
        rows, total = await self._repo.list(request.model_id or None, limit, (page - 1) * limit)
        items = [pb.ModelEvaluation(
            id=r["id"], model_id=r["model_id"], eval_name=r["eval_name"], perplexity=_round(r["perplexity"]),
            bleu_score=_round(r["bleu_score"]), rouge_score=_round(r["rouge_score"]),
            response_diversity=_round(r["response_diversity"]),
            avg_response_length=round(r["avg_response_length"], 1), created_at=iso(r["created_at"]))
            for r in rows]  # fmt: skip
        return pb.ListEvaluationsResponse(success=True, data=pb.ListEvaluationsData(evaluations=items),
                                          meta=meta(pagination(page, limit, total)))
