"""GET /v1/usage's RPC on the real ledger: per-bucket sums, exact totals, sketch percentiles within 1% of the exact
ones, a caller sees its own usage and only an admin another's."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from llmlab.analytics.v1 import usage_service_pb2 as pb
from llmlab.analytics.v1 import usage_service_pb2_grpc as pb_grpc
from llmlab.runtime.interceptors import PERMISSIONS_HEADER, PRINCIPAL_HEADER
from services.analytics.readmodel import SKETCH_ALPHA

from .test_analytics_readmodel import analytics_app, publish, wait_applied  # noqa: F401


def as_user(user: str, permissions: str = "inference") -> tuple:
    return ((PRINCIPAL_HEADER, f"user:{user}"), (PERMISSIONS_HEADER, permissions))


async def test_usage_buckets_totals_and_percentiles(analytics_app):  # noqa: F811
    rng = np.random.default_rng(5)
    latencies = rng.lognormal(5, 0.8, 60)
    events = [("usage", "usage.recorded", {
        "principal": f"user:u1/key:k{i % 2}", "model": "m-a" if i % 3 else "m-b", "prompt_tokens": 5 + i,
        "completion_tokens": 7, "total_tokens": 12 + i, "latency_ms": float(latencies[i]), "cost": 0.0005})
        for i in range(60)]
    events += [("usage", "usage.recorded", {"principal": "user:u2", "model": "m-a", "prompt_tokens": 1,
                                            "completion_tokens": 1, "latency_ms": 5.0, "cost": 0.1})]
    await publish(analytics_app, events)
    await wait_applied(analytics_app.db, len(events))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{analytics_app.port}") as channel:
        stub = pb_grpc.UsageServiceStub(channel)
        got = await stub.GetUsage(pb.GetUsageRequest(), metadata=as_user("u1"))
        assert [(d.model, d.requests) for d in got.data] == [("m-a", 40), ("m-b", 20)]
        assert got.total.requests == 60 and got.total.tokens == sum(12 + i for i in range(60))
        assert got.total.cost == pytest.approx(0.03)
        mb = sorted(latencies[i] for i in range(60) if i % 3 == 0)
        exact_p95 = mb[int(np.ceil(0.95 * len(mb))) - 1]
        assert got.data[1].latency.p95_ms == pytest.approx(exact_p95, rel=SKETCH_ALPHA, abs=0.06)

        hourly = await stub.GetUsage(pb.GetUsageRequest(granularity="hour", model="m-b"), metadata=as_user("u1"))
        assert len(hourly.data) == 1 and hourly.data[0].date.endswith(":00:00Z")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetUsage(pb.GetUsageRequest(user_id="u2"), metadata=as_user("u1"))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        other = await stub.GetUsage(pb.GetUsageRequest(user_id="u2"), metadata=as_user("root", "admin"))
        assert other.total.requests == 1 and other.total.cost == pytest.approx(0.1)
        for bad in (pb.GetUsageRequest(granularity="week"), pb.GetUsageRequest(start_date="2024-13-01"),
                    pb.GetUsageRequest(start_date="2024-02-02", end_date="2024-02-01")):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.GetUsage(bad, metadata=as_user("u1"))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
