"""The optional LLM judge (docs/metrics.md): a model registered with an OpenAI-compatible upstream grades stored
scores beside the measured ones; a judge whose answer is unusable leaves the measured scores alone. The upstream is
a small HTTP/1.1 server in this test speaking OpenAI's streaming wire format; the inference and metrics services
are real, on port 0, against the real Postgres and Redis."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import grpc
import h11
import pytest

from llmlab.metrics.v1 import metrics_service_pb2 as pb
from llmlab.metrics.v1 import metrics_service_pb2_grpc as pb_grpc
from llmlab.metrics.v1 import scoring_service_pb2 as spb
from llmlab.metrics.v1 import scoring_service_pb2_grpc as spb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.inference.app import SPEC as INFERENCE
from services.inference.models.registry import ModelRegistry, NewModel
from services.metrics.app import SPEC as METRICS
from services.metrics.scoring import DIMENSIONS

KEY_ENV = "LLMLAB_TEST_JUDGE_KEY"
VERDICT = {d: {"score": 60 + i, "rationale": f"{d} is fine."} for i, d in enumerate(DIMENSIONS)}


class JudgeUpstream:
    """Answers every chat completion with `answer`, streamed as OpenAI does."""

    def __init__(self) -> None:
        self.answer = json.dumps(VERDICT)
        self.requests: list[dict] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> JudgeUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            self.requests.append(json.loads(body))
            frames = [{"choices": [{"index": 0, "delta": {"role": "assistant", "content": self.answer},
                                    "finish_reason": None}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                      {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 40, "total_tokens": 90}}]
            out = conn.send(h11.Response(status_code=200, headers=[("content-type", "text/event-stream")]))
            for frame in frames:
                out += conn.send(h11.Data(data=b"data: " + json.dumps(frame).encode() + b"\n\n"))
            out += conn.send(h11.Data(data=b"data: [DONE]\n\n")) + conn.send(h11.EndOfMessage())
            writer.write(out)
            await writer.drain()
        finally:
            writer.close()


@pytest.fixture
async def judged(database_url, redis_url, schema, redis_prefix, monkeypatch) -> AsyncIterator[tuple]:
    monkeypatch.setenv(KEY_ENV, "sk-judge")
    apps: list[ServiceApp] = []
    async with JudgeUpstream() as upstream:
        try:
            inference = ServiceApp(INFERENCE, load_settings(
                INFERENCE.settings_cls, "inference", environ={}, port=0, database_url=database_url,
                redis_url=redis_url, db_schema=f"{schema}_inference", redis_prefix=redis_prefix,
                shutdown_grace_seconds=1.0, load_on_start=False))
            apps.append(inference)
            await inference.start()
            await ModelRegistry(inference.db).create(NewModel(
                id="judge", name="Judge", provider="openai-compatible", backend="openai", context_window=8192,
                max_tokens=1024, backend_config={"base_url": f"http://127.0.0.1:{upstream.port}/v1",
                                                 "api_key_env": KEY_ENV, "model": "grader"}))
            monkeypatch.setenv("LLMLAB_INFERENCE_TARGET", f"127.0.0.1:{inference.port}")
            metrics = ServiceApp(METRICS, load_settings(
                METRICS.settings_cls, "metrics", environ={}, port=0, database_url=database_url, redis_url=redis_url,
                db_schema=f"{schema}_metrics", redis_prefix=redis_prefix, shutdown_grace_seconds=1.0,
                judge_model="judge"))
            apps.append(metrics)
            await metrics.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{metrics.port}") as channel:
                yield upstream, spb_grpc.ScoringServiceStub(channel), pb_grpc.MetricsServiceStub(channel)
        finally:
            for app in reversed(apps):
                await app.stop()


def stored_input(rid: int) -> spb.ScoringInput:
    return spb.ScoringInput(content="Paris is the capital of France. It lies on the Seine.",
                            prompt="What is the capital of France?",
                            subject=spb.ScoringSubject(response_id=rid, experiment_id=1, experiment_type="single",
                                                       model="m", created_at="2024-10-30T11:45:00Z"))


async def test_a_judge_scores_beside_the_measured_scores(judged):
    upstream, scoring, metrics = judged
    scored = await scoring.ScoreResponse(spb.ScoreResponseRequest(input=stored_input(1)))
    assert scored.result.detailed_analysis.coherence.judge.score == 60
    got = (await metrics.GetResponseMetrics(pb.GetResponseMetricsRequest(response_id=1))).data.detailed_analysis
    for i, d in enumerate(DIMENSIONS):
        analysis = getattr(got, d)
        assert analysis.judge.score == 60 + i and analysis.judge.rationale == f"{d} is fine."
        assert analysis.judge.model == "judge" and len(analysis.factors) == 3  # the measured score stays
    asked = upstream.requests[0]
    assert asked["model"] == "grader" and asked["temperature"] == 0
    assert "Paris is the capital" in asked["messages"][-1]["content"]
    # Texts scored without a subject are not stored and cost no judge call.
    await scoring.ScoreResponse(spb.ScoreResponseRequest(input=spb.ScoringInput(content="Hello there.")))
    assert len(upstream.requests) == 1


async def test_an_unusable_verdict_leaves_the_measured_scores(judged):
    upstream, scoring, metrics = judged
    upstream.answer = "I think it is pretty good overall!"
    scored = await scoring.ScoreResponse(spb.ScoreResponseRequest(input=stored_input(2)))
    assert not scored.result.detailed_analysis.coherence.HasField("judge")
    got = (await metrics.GetResponseMetrics(pb.GetResponseMetricsRequest(response_id=2))).data
    assert got.metrics.overall_quality == scored.result.scores.overall_quality
    assert not got.detailed_analysis.readability.HasField("judge")
