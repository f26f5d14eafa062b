"""POST /evaluations and GET /experiments/{id}/metrics over gRPC: the metrics service checks the experiment and the run
through the experiments service (both real, port 0) and aggregates each run's latest evaluation."""

from __future__ import annotations

import uuid

import grpc
import numpy as np
import pytest
from google.protobuf import json_format

from llmlab.experiments.v1 import research_experiments_service_pb2 as rpb
from llmlab.experiments.v1 import research_experiments_service_pb2_grpc as rpb_grpc
from llmlab.metrics.v1 import evaluation_service_pb2 as pb
from llmlab.metrics.v1 import evaluation_service_pb2_grpc as pb_grpc
from services.experiments.research.repository import ResearchRepository

from ..conftest import drop_schemas
from .conftest import start_app


@pytest.fixture
async def evaluations(database_url, redis_url, schema, redis_prefix, experiments_app, monkeypatch):
    from services.metrics.app import SPEC

    monkeypatch.setenv("LLMLAB_EXPERIMENTS_TARGET", f"127.0.0.1:{experiments_app.port}")
    app = await start_app(SPEC, database_url, redis_url, f"{schema}_metrics", redis_prefix)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        yield pb_grpc.EvaluationServiceStub(channel)
    await app.stop()
    await drop_schemas(database_url, f"{schema}_metrics")


async def test_evaluations_are_checked_and_aggregated(experiments_app, experiments_channel, evaluations):
    research = rpb_grpc.ResearchExperimentServiceStub(experiments_channel)
    e = await research.CreateResearchExperiment(rpb.CreateResearchExperimentRequest(name="evals"))
    repo = ResearchRepository(experiments_app.db)
    row = await repo.get(e.id)
    run_a = await repo.create_run(row.seq, {}, "", executed=False)
    run_b = await repo.create_run(row.seq, {}, "", executed=False)

    def request(run_id: str, metrics: dict, **extra) -> pb.CreateEvaluationRequest:
        return json_format.ParseDict({"experiment_id": e.id, "run_id": run_id, "metrics": metrics, **extra},
                                     pb.CreateEvaluationRequest())

    first = await evaluations.CreateEvaluation(request(run_a.id, {"accuracy": 0.5, "bleu": 0.2},
                                                       metadata={"hardware": "cpu"}))
    assert first.metrics == {"accuracy": 0.5, "bleu": 0.2} and dict(first.metadata) == {"hardware": "cpu"}
    await evaluations.CreateEvaluation(request(run_a.id, {"accuracy": 0.8, "bleu": 0.3}))  # the latest counts
    await evaluations.CreateEvaluation(request(run_b.id, {"accuracy": 0.6}))

    m = await evaluations.GetExperimentMetrics(pb.GetExperimentMetricsRequest(experiment_id=e.id))
    assert [r.run_id for r in m.runs] == [run_a.id, run_b.id]
    acc = m.aggregated_metrics["accuracy"]
    assert acc.count == 2 and acc.min == 0.6 and acc.max == 0.8
    assert acc.mean == pytest.approx(np.mean([0.8, 0.6])) and acc.std == pytest.approx(np.std([0.8, 0.6], ddof=1))
    assert m.aggregated_metrics["bleu"].count == 1 and m.aggregated_metrics["bleu"].std == 0

    for bad_run, code in ((str(uuid.uuid4()), grpc.StatusCode.NOT_FOUND), ("nope", grpc.StatusCode.INVALID_ARGUMENT)):
        with pytest.raises(grpc.aio.AioRpcError) as exc:
            await evaluations.CreateEvaluation(request(bad_run, {"accuracy": 1}))
        assert exc.value.code() == code
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await evaluations.CreateEvaluation(request(run_a.id, {}))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    await research.DeleteResearchExperiment(rpb.DeleteResearchExperimentRequest(id=e.id))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await evaluations.GetExperimentMetrics(pb.GetExperimentMetricsRequest(experiment_id=e.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
