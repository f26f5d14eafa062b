"""The lab loop over gRPC with real services on port 0 (experiments -> inference -> metrics), real Postgres and Redis
and the real embedded model: an engine sized to refuse part of a run (max_batch 1, max_queue 1) shows that one
failed generation marks that response failed, reports it in progress, and the others are kept
(responses_service.proto)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import grpc
import pytest
import redis.asyncio as redis

from llmlab.experiments.v1 import experiments_service_pb2 as epb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as epb_grpc
from llmlab.experiments.v1 import responses_service_pb2 as pb
from llmlab.experiments.v1 import responses_service_pb2_grpc as pb_grpc
from llmlab.metrics.v1 import metrics_service_pb2 as mpb
from llmlab.metrics.v1 import metrics_service_pb2_grpc as mpb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.experiments.app import SPEC as EXPERIMENTS
from services.inference.app import SPEC as INFERENCE
from services.inference.artifacts import find_cached
from services.inference.settings import InferenceSettings
from services.metrics.app import SPEC as METRICS

from .conftest import start_app

MODEL = "smollm2-135m-instruct"


@pytest.fixture
async def stack(database_url, redis_url, schema, redis_prefix, monkeypatch) -> AsyncIterator[dict[str, ServiceApp]]:
    if find_cached(MODEL) is None:
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail(f"the embedded model {MODEL} is not imported")
        pytest.skip(f"the embedded model {MODEL} is not imported")
    settings = load_settings(
        InferenceSettings, INFERENCE.name, environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=f"{schema}_inference", redis_prefix=redis_prefix, shutdown_grace_seconds=1.0,
        max_batch=1, max_queue=1,
    )  # fmt: skip
    apps: dict[str, ServiceApp] = {"inference": ServiceApp(INFERENCE, settings)}
    try:
        await apps["inference"].start()
        apps["metrics"] = await start_app(METRICS, database_url, redis_url, f"{schema}_metrics", redis_prefix)
        for peer in ("inference", "metrics"):
            monkeypatch.setenv(f"LLMLAB_{peer.upper()}_TARGET", f"127.0.0.1:{apps[peer].port}")
        apps["experiments"] = await start_app(EXPERIMENTS, database_url, redis_url, f"{schema}_experiments",
                                              redis_prefix)
        yield apps
    finally:
        for app in reversed(list(apps.values())):
            await app.stop()


def frames(bodies: list) -> list[dict]:
    """The SSE frames of a GenerateResponses call, parsed."""
    out = []
    for body in bodies:
        assert body.content_type == "text/event-stream"
        text = body.data.decode()
        assert text.startswith("data: ") and text.endswith("\n\n")
        out.append(json.loads(text[len("data: "):]))
    return out


async def test_an_overloaded_engine_fails_some_responses_and_the_others_are_kept(stack, redis_url, redis_prefix):
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack['experiments'].port}") as channel:
        exp = (await epb_grpc.ExperimentServiceStub(channel).CreateExperiment(epb.CreateExperimentRequest(
            name="overload", model=MODEL, prompt="Name a colour.",
            parameters=epb.Parameters(temperature=0.7, max_tokens=8),
        ))).data.experiment
        call = pb_grpc.ResponseServiceStub(channel).GenerateResponses(
            pb.GenerateResponsesRequest(experiment_id=exp.id, count=6), metadata=(("accept", "text/event-stream"),))
        events = frames([body async for body in call])

        assert events[0]["status"] == "starting"
        generating, final = events[1:-1], events[-1]
        assert [e["current_response"] for e in generating] == [1, 2, 3, 4, 5, 6]
        failed = [e for e in generating if "error" in e]
        kept = [e for e in generating if "response" in e]
        assert failed and kept and len(failed) + len(kept) == 6
        for e in failed:
            assert e["error"]["code"] == "GENERATION_FAILED" and e["error"]["statusCode"] == 429
            assert "overloaded" in e["error"]["message"]
        assert final["status"] == "completed"
        assert final["summary"]["total_failed"] == len(failed)
        assert sorted(r["id"] for r in final["results"]) == sorted(e["response"]["id"] for e in kept)

        db = stack["experiments"].db
        rows = await db.fetch("SELECT status, error FROM responses WHERE experiment_id = $1", exp.id)
        assert sorted(r["status"] for r in rows) == sorted(["failed"] * len(failed) + ["completed"] * len(kept))
        stats = (await epb_grpc.ExperimentServiceStub(channel).GetExperimentStats(
            epb.GetExperimentStatsRequest(id=exp.id))).data
        assert stats.overview.total_responses == len(kept)
        assert stats.overview.success_rate == round(len(kept) / 6 * 100, 1)
        got = (await epb_grpc.ExperimentServiceStub(channel).GetExperiment(epb.GetExperimentRequest(id=exp.id)))
        assert got.data.experiment.status == "completed" and len(got.data.experiment.responses) == len(kept)

    # Every kept response was scored into the metrics store, and both events were published.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack['metrics'].port}") as channel:
        rid = kept[0]["response"]["id"]
        m = (await mpb_grpc.MetricsServiceStub(channel).GetResponseMetrics(
            mpb.GetResponseMetricsRequest(response_id=rid))).data
        assert m.metrics.overall_quality == kept[0]["response"]["metrics"]["overall_quality"]
        assert m.metrics.HasField("perplexity") and m.metrics.perplexity > 1
    client = redis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{redis_prefix}:stream:responses")
    finally:
        await client.aclose()
    types = [f[b"type"].decode() for _, f in entries]
    assert types.count("response.created") == len(kept) and types.count("response.scored") == len(kept)
