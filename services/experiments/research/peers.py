"""What the research view asks other services over gRPC: the model registry (inference), dataset files (files, through
its DatasetService and TransferService: never its tables), reference metrics and evaluations (metrics)."""

from __future__ import annotations

import csv
import io
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

import grpc

from llmlab.files.v1 import datasets_service_pb2 as dpb
from llmlab.files.v1 import datasets_service_pb2_grpc as dpb_grpc
from llmlab.files.v1 import transfers_service_pb2 as tpb
from llmlab.files.v1 import transfers_service_pb2_grpc as tpb_grpc
from llmlab.inference.v1 import inference_service_pb2 as inf
from llmlab.inference.v1 import inference_service_pb2_grpc as inf_grpc
from llmlab.metrics.v1 import evaluation_service_pb2 as epb
from llmlab.metrics.v1 import evaluation_service_pb2_grpc as epb_grpc
from llmlab.metrics.v1 import scoring_service_pb2 as spb
from llmlab.metrics.v1 import scoring_service_pb2_grpc as spb_grpc
from llmlab.runtime import Unavailable

LOOKUP_TIMEOUT_SECONDS = 10.0
DOWNLOAD_TIMEOUT_SECONDS = 120.0
MAX_DATASET_ROWS = 200_000


@dataclass
class Model:
    """A registered model: its UUID (research id), slug (what Generate takes) and prices per token."""

    uuid: str
    slug: str
    input_per_token: float
    output_per_token: float
    max_output_tokens: int


class Gone(Exception):
    """The asked-for object does not exist (404 from its service)."""


def _unavailable(what: str) -> Unavailable:
    return Unavailable(f"The {what} cannot be reached; nothing was changed, please retry")


class Peers:
    def __init__(self, inference: grpc.aio.Channel, files: grpc.aio.Channel, metrics: grpc.aio.Channel) -> None:
        self.inference = inf_grpc.InferenceServiceStub(inference)
        self.datasets = dpb_grpc.DatasetServiceStub(files)
        self.transfers = tpb_grpc.TransferServiceStub(files)
        self.scoring = spb_grpc.ScoringServiceStub(metrics)
        self.evaluations = epb_grpc.EvaluationServiceStub(metrics)

    async def model(self, model_id: str) -> Model:
        try:
            found = await self.inference.GetModel(inf.GetModelRequest(id=model_id), timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise Gone(model_id) from None
            raise _unavailable("model registry") from None
        m = found.model
        return Model(m.uuid or model_id, m.id, m.input_price_per_1k / 1000, m.output_price_per_1k / 1000,
                     m.max_output_tokens)

    async def dataset(self, dataset_id: str) -> dpb.GetDatasetResponse:
        try:
            return await self.datasets.GetDataset(dpb.GetDatasetRequest(dataset_id=dataset_id),
                                                  timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                raise Gone(dataset_id) from None
            raise _unavailable("files service") from None

    async def dataset_rows(self, dataset_id: str, fmt: str) -> list[dict[str, Any]]:
        """Every row of the dataset's current file, through a signed download as any client would fetch it."""
        try:
            link = await self.datasets.GetDatasetDownloadUrl(dpb.GetDatasetDownloadUrlRequest(dataset_id=dataset_id),
                                                             timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise _unavailable("files service") from None
        url = urllib.parse.urlsplit(link.download_url)
        parts = url.path.split("/")  # ["", "downloads", token, filename]
        query = dict(urllib.parse.parse_qsl(url.query))
        request = tpb.GetSignedDownloadRequest(token=parts[2], filename=urllib.parse.unquote(parts[3]),
                                               expires=int(query.get("expires", "0")),
                                               signature=query.get("signature", ""))
        chunks: list[bytes] = []
        try:
            async for body in self.transfers.GetSignedDownload(request, timeout=DOWNLOAD_TIMEOUT_SECONDS):
                chunks.append(body.data)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise _unavailable("files service") from None
        return parse_rows(b"".join(chunks), fmt)

    async def reference_metrics(self, predictions: list[str],
                                references: list[str]) -> spb.ComputeReferenceMetricsResponse:
        samples = [spb.ReferenceSample(prediction=p, references=[r]) for p, r in zip(predictions, references,
                                                                                      strict=True)]
        return await self.scoring.ComputeReferenceMetrics(spb.ComputeReferenceMetricsRequest(samples=samples),
                                                          timeout=120)

    async def evaluate(self, experiment_id: str, run_id: str, metrics: dict[str, float],
                       metadata: dict[str, Any]) -> epb.CreateEvaluationResponse:
        req = epb.CreateEvaluationRequest(experiment_id=experiment_id, run_id=run_id, metrics=metrics)
        req.metadata.update(metadata)
        return await self.evaluations.CreateEvaluation(req, timeout=LOOKUP_TIMEOUT_SECONDS)


def parse_rows(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """A dataset file's rows as objects: JSONL lines, a JSON array, or CSV records with a header."""
    text = data.decode("utf-8", errors="replace")
    rows: list[Any]
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    elif fmt == "json":
        loaded = json.loads(text) if text.strip() else []
        rows = loaded if isinstance(loaded, list) else loaded.get("data", []) if isinstance(loaded, dict) else []
    else:
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows[:MAX_DATASET_ROWS] if isinstance(r, dict)]
