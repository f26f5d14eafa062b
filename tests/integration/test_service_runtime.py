"""The shared bootstrap on a real service: health, reflection, service info, error mapping, graceful stop."""

import asyncio

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from llmlab.common.v1 import service_info_pb2, service_info_pb2_grpc
from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc
from llmlab.experiments.v1 import prompts_service_pb2, prompts_service_pb2_grpc
from llmlab.runtime import ServiceApp, ServiceSpec


async def test_health_reports_serving_per_service(experiments_channel):
    stub = health_pb2_grpc.HealthStub(experiments_channel)
    for name in ("", "llmlab.experiments.v1.ExperimentService", "llmlab.experiments.v1.ResponseService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(experiments_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(experiments_channel)
    call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    async for reply in call:
        names = {s.name for s in reply.list_services_response.service}
        break
    assert {"llmlab.experiments.v1.ExperimentService", "grpc.health.v1.Health",
            "llmlab.common.v1.ServiceInfoService"} <= names


async def test_service_info_and_metrics(experiments_channel):
    stub = service_info_pb2_grpc.ServiceInfoServiceStub(experiments_channel)
    info = await stub.GetServiceInfo(service_info_pb2.GetServiceInfoRequest())
    assert info.service == "experiments" and info.memory_rss_bytes > 0
    assert dict(info.dependencies) == {"postgres": "healthy", "redis": "healthy"}
    assert info.db_connections_active >= 0
    await pb_grpc.ExperimentServiceStub(experiments_channel).ListExperiments(pb.ListExperimentsRequest())
    text = (await stub.ScrapeMetrics(service_info_pb2.ScrapeMetricsRequest())).text
    assert 'http_requests_total{method="GET",path="/api/experiments",status="200"} 1.0' in text


async def test_unimplemented_rpc_is_a_clean_501(app_factory):
    """An RPC of the contract that no servicer implements (every shipped one is implemented; a new RPC lands in the
    protos first) answers UNIMPLEMENTED with the reason the gateway maps to 501."""

    async def setup(app: ServiceApp) -> None:
        app.serve_package("llmlab.experiments.v1", {})  # the generated base servicers only

    app = await app_factory(ServiceSpec(name="experiments", setup=setup, uses_redis=False))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = prompts_service_pb2_grpc.PromptServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreatePrompt(prompts_service_pb2.CreatePromptRequest())
    finally:
        await app.stop()
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert err.value.details() == "CreatePrompt is not implemented yet"
    st = status_pb2.Status.FromString(dict(err.value.trailing_metadata())["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    st.details[0].Unpack(info)
    assert info.reason == "NOT_IMPLEMENTED"


async def test_unexpected_error_is_sanitised(experiments_app, experiments_channel, schema):
    """A real failure (the table vanished under the service) reaches the client as a generic INTERNAL."""
    await experiments_app.db.execute(f'DROP TABLE "{schema}".experiments CASCADE')
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.ExperimentServiceStub(experiments_channel).GetExperiment(pb.GetExperimentRequest(id=1))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert err.value.details() == "An unexpected error occurred. Please try again later."
    st = status_pb2.Status.FromString(dict(err.value.trailing_metadata())["grpc-status-details-bin"])
    assert "experiments" not in st.message and "relation" not in str(st)


async def test_graceful_stop_drains_in_flight_requests(app_factory, database_url, schema):
    """stop(): NOT_SERVING, the request already running completes, then the pools close."""
    import asyncpg

    from services.experiments.app import SPEC

    app = await app_factory(SPEC)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.ExperimentServiceStub(channel)
    health = health_pb2_grpc.HealthStub(channel)
    blocker = await asyncpg.connect(database_url)
    try:
        # Hold a lock so the next request blocks inside the service until we let go.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute(f'LOCK TABLE "{schema}".experiments IN ACCESS EXCLUSIVE MODE')
        in_flight = asyncio.ensure_future(stub.ListExperiments(pb.ListExperimentsRequest()))
        await asyncio.sleep(0.2)
        stopping = asyncio.create_task(app.stop(grace=5.0))
        await asyncio.sleep(0.2)
        assert not in_flight.done()
        await tx.rollback()
        assert (await in_flight).success
        await stopping
    finally:
        await blocker.close()
    assert app.db._closed
    with pytest.raises(grpc.aio.AioRpcError):
        await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
    await channel.close()


async def _schema_exists(database_url: str, schema: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = $1", schema))
    finally:
        await conn.close()


async def test_a_service_without_storage_opens_no_pool_and_creates_no_schema(app_factory, database_url, schema):
    """A spec without migrations and without Redis: no schema, no pool, no Redis client; it still serves."""
    from llmlab.metrics.v1 import evaluation_service_pb2, evaluation_service_pb2_grpc

    async def setup(app: ServiceApp) -> None:
        app.serve_package("llmlab.metrics.v1", {})

    app = await app_factory(ServiceSpec(name="metrics", setup=setup, uses_redis=False))
    try:
        assert app.db is None and app.redis is None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            info = await service_info_pb2_grpc.ServiceInfoServiceStub(channel).GetServiceInfo(
                service_info_pb2.GetServiceInfoRequest()
            )
            assert dict(info.dependencies) == {} and info.db_connections_active == -1
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await evaluation_service_pb2_grpc.EvaluationServiceStub(channel).ListEvaluations(
                    evaluation_service_pb2.ListEvaluationsRequest()
                )
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await app.stop()
    assert not await _schema_exists(database_url, schema)


async def test_ops_checks_postgres_live_through_the_analytics_pool(database_url, redis_url, schema, redis_prefix):
    """analytics has a read model (its own schema and pool); its ops answers check Postgres through that pool."""
    from llmlab.analytics.v1 import ops_service_pb2, ops_service_pb2_grpc
    from services.analytics.app import SPEC

    from .conftest import start_app

    app = await start_app(SPEC, database_url, redis_url, schema, redis_prefix)
    try:
        assert app.db is not None and app.redis is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            body = await ops_service_pb2_grpc.OpsServiceStub(channel).GetDetailedHealth(
                ops_service_pb2.GetDetailedHealthRequest()
            )
        assert body.dependencies["postgres"].status == "healthy"
        assert body.dependencies["redis"].status == "healthy"
    finally:
        await app.stop()
