"""The lab experiments resource over gRPC against the real Postgres (CRUD, history and bulk actions), with the
inference service on port 0 as the model registry that `model` is checked against."""

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from grpc_status import rpc_status

from llmlab.devstack import free_port
from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc
from llmlab.inference.v1 import model_service_pb2 as model_pb
from llmlab.inference.v1 import model_service_pb2_grpc as model_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.inference.app import SPEC as INFERENCE
from services.inference.settings import InferenceSettings
from tests.conftest import delete_keys, drop_schemas

MODELS = ("smollm2-135m-instruct", "m1", "m2")


@pytest.fixture(scope="module")
async def registry(database_url, redis_url) -> AsyncIterator[ServiceApp]:
    """One inference service for the module, in its own schema, holding MODELS (no engine is loaded: only the
    registry is asked)."""
    run = uuid.uuid4().hex[:12]
    schema, prefix = f"t_{run}", f"t{run}"
    settings = load_settings(
        InferenceSettings, INFERENCE.name, environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=schema, redis_prefix=prefix, shutdown_grace_seconds=1.0, load_on_start=False,
    )  # fmt: skip
    app = ServiceApp(INFERENCE, settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            models = model_grpc.ModelServiceStub(channel)
            for model in MODELS:
                try:
                    await models.CreateLabModel(model_pb.CreateLabModelRequest(name=model, base_model=model, id=model))
                except grpc.aio.AioRpcError as exc:  # the embedded model registers itself when it is imported
                    assert exc.code() == grpc.StatusCode.ALREADY_EXISTS
        yield app
    finally:
        await app.stop()
        await drop_schemas(database_url, schema)
        await delete_keys(redis_url, prefix)


@pytest.fixture(autouse=True)
def inference_target(registry, monkeypatch):
    """The experiments service finds its peers by LLMLAB_<PEER>_TARGET, as devstack and Kubernetes set it."""
    monkeypatch.setenv("LLMLAB_INFERENCE_TARGET", f"127.0.0.1:{registry.port}")


@pytest.fixture
def stub(experiments_channel):
    return pb_grpc.ExperimentServiceStub(experiments_channel)


def ids(*values) -> struct_pb2.ListValue:
    """`experiment_ids` as a JSON list, the way the gateway passes it on."""
    out = struct_pb2.ListValue()
    out.extend(values)
    return out


def params(**values) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(values)
    return out


def violation(err: grpc.aio.AioRpcError) -> dict:
    """The details of an error answer: the lab validation error's {field, value, constraint}, or the not-found ids."""
    for detail in rpc_status.from_call(err).details:
        if detail.Is(struct_pb2.Struct.DESCRIPTOR):
            details = struct_pb2.Struct()
            detail.Unpack(details)
            return json_format.MessageToDict(details)
    raise AssertionError("no details")


async def create(stub, name="Story", **kw):
    params = kw.pop("parameters", {"temperature": 0.8, "top_p": 0.9})
    req = pb.CreateExperimentRequest(
        name=name, model=kw.pop("model", "smollm2-135m-instruct"), prompt=kw.pop("prompt", "Write a story"),
        parameters=pb.Parameters(**params), **kw,
    )
    return (await stub.CreateExperiment(req)).data.experiment


def as_json(msg):
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def test_create_get_update_delete(stub):
    created = await create(stub, description="d", tags=["creative", "test"], response_count=2,
                           parameter_ranges=pb.ParameterRanges(temperature_min=0.1, temperature_max=1.0))
    assert created.status == "draft" and created.id > 0
    got = as_json((await stub.GetExperiment(pb.GetExperimentRequest(id=created.id))).data.experiment)
    assert got["parameters"] == {"temperature": 0.8, "top_p": 0.9, "max_tokens": 256,
                                 "frequency_penalty": 0.0, "presence_penalty": 0.0}
    assert got["parameter_ranges"] == {"temperature_min": 0.1, "temperature_max": 1.0}
    assert got["quality_score"] is None and got["duration"] is None and got["responses"] == []
    assert got["tags"] == ["creative", "test"] and got["response_count"] == 2

    updated = (await stub.UpdateExperiment(pb.UpdateExperimentRequest(
        id=created.id, name="Renamed", parameters=pb.Parameters(temperature=0.2),
        parameter_ranges=pb.ParameterRanges(temperature_max=0.5), favorited=True,
    ))).data.experiment
    assert updated.name == "Renamed" and updated.favorited
    assert updated.parameters.temperature == 0.2 and updated.parameters.top_p == 0.9  # untouched keys stay
    assert updated.parameter_ranges.temperature_min == 0.1 and updated.parameter_ranges.temperature_max == 0.5
    assert updated.description == "d" and list(updated.tags) == ["creative", "test"]

    deleted = await stub.DeleteExperiment(pb.DeleteExperimentRequest(id=created.id))
    assert deleted.data.deleted_id == created.id and deleted.data.message == "Experiment deleted successfully"
    for call in (stub.GetExperiment(pb.GetExperimentRequest(id=created.id)),
                 stub.DeleteExperiment(pb.DeleteExperimentRequest(id=created.id)),
                 stub.UpdateExperiment(pb.UpdateExperimentRequest(id=created.id, name="x"))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_update_changes_nothing(stub):
    created = await create(stub)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateExperiment(pb.UpdateExperimentRequest(id=created.id, name="ok",
                                                               parameters=pb.Parameters(temperature=3.0)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.UpdateExperiment(pb.UpdateExperimentRequest(
            id=created.id, parameter_ranges=pb.ParameterRanges(top_p_min=0.9, top_p_max=0.1)))
    after = (await stub.GetExperiment(pb.GetExperimentRequest(id=created.id))).data.experiment
    assert after.name == created.name and after.parameters.temperature == 0.8 and after.updated_at == created.updated_at


async def test_list_filters_sort_and_pagination(stub, experiments_app):
    made = {}
    for name, model, typ, status in [
        ("Alpha poem", "m1", "single", "draft"),
        ("Beta story", "m2", "batch", "completed"),
        ("Gamma story", "m1", "single", "running"),
    ]:
        e = await create(stub, name=name, model=model, type=typ, description=f"about {name.lower()}")
        made[name] = e.id
        if status != "draft":
            await stub.UpdateExperiment(pb.UpdateExperimentRequest(id=e.id, status=status))
    # Back-date one experiment to exercise the date range (created_at is server-set).
    await experiments_app.db.execute(
        "UPDATE experiments SET created_at = '2024-10-30T10:15:00Z' WHERE id = $1", made["Alpha poem"])

    async def names(**kw):
        r = await stub.ListExperiments(pb.ListExperimentsRequest(**kw))
        return [e.name for e in r.data.experiments], r.meta.pagination

    assert (await names(sort_by="name", sort_order="asc"))[0] == ["Alpha poem", "Beta story", "Gamma story"]
    assert (await names(search="STORY", sort_by="name"))[0] == ["Gamma story", "Beta story"]
    assert (await names(search="about alpha"))[0] == ["Alpha poem"]
    assert (await names(search="100%_"))[0] == []
    assert (await names(model="m1", sort_by="name", sort_order="asc"))[0] == ["Alpha poem", "Gamma story"]
    assert (await names(type="batch"))[0] == ["Beta story"]
    assert (await names(status="running"))[0] == ["Gamma story"]
    assert (await names(date_from="2024-10-30", date_to="2024-10-30"))[0] == ["Alpha poem"]
    assert (await names(date_to="2024-10-29"))[0] == []
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert sorted((await names(date_from=today))[0]) == ["Beta story", "Gamma story"]

    page1, meta1 = await names(limit=2, sort_by="name", sort_order="asc")
    page2, meta2 = await names(limit=2, page=2, sort_by="name", sort_order="asc")
    assert page1 + page2 == ["Alpha poem", "Beta story", "Gamma story"]
    assert (meta1.total, meta1.total_pages, meta1.has_next, meta1.has_previous) == (3, 2, True, False)
    assert (meta2.page, meta2.has_next, meta2.has_previous) == (2, False, True)
    assert (await names(page=5))[0] == []

    await stub.BulkExperiments(pb.BulkExperimentsRequest(action="archive", experiment_ids=ids(made["Beta story"])))
    assert "Beta story" not in (await names())[0]
    assert "Beta story" in (await names(archived=True))[0]


async def test_history_timeline_and_favorites(stub, experiments_app):
    a = await create(stub, name="A")
    b = await create(stub, name="B")
    c = await create(stub, name="C")
    await experiments_app.db.execute("UPDATE experiments SET created_at = '2024-10-29T09:00:00Z' WHERE id = $1", a.id)
    await experiments_app.db.execute(
        """INSERT INTO responses (experiment_id, content, overall_quality, cost, response_time_ms, token_count)
           VALUES ($1, 'x', 90.0, 0.01, 1500, 10), ($1, 'y', 80.0, 0.02, 1700, 12), ($2, 'z', 70.0, 0.5, 100, 3)""",
        b.id, a.id)
    await stub.BulkExperiments(pb.BulkExperimentsRequest(action="favorite", experiment_ids=ids(b.id, c.id)))

    r = await stub.GetExperimentHistory(pb.GetExperimentHistoryRequest(view_mode="timeline"))
    data = as_json(r.data)
    assert data["view_mode"] == "timeline"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    assert data["timeline_data"] == [
        {"date": today, "experiments": [b.id, c.id], "total_quality": 85.0, "experiment_count": 2},
        {"date": "2024-10-29", "experiments": [a.id], "total_quality": 70.0, "experiment_count": 1},
    ]
    by_id = {e["id"]: e for e in data["experiments"]}
    assert by_id[b.id]["quality_score"] == 85.0
    assert by_id[b.id]["summary"] == {"response_count": 2, "total_cost": 0.03, "duration": "3.2s"}
    assert by_id[c.id]["quality_score"] is None and by_id[c.id]["summary"]["duration"] is None

    fav = await stub.GetExperimentHistory(pb.GetExperimentHistoryRequest(favorited=True, sort_by="name",
                                                                         sort_order="asc"))
    assert [e.name for e in fav.data.experiments] == ["B", "C"]
    assert [t.experiment_count for t in fav.data.timeline_data] == [2]
    best = await stub.ListExperiments(pb.ListExperimentsRequest(sort_by="quality"))
    assert [e.name for e in best.data.experiments] == ["B", "A", "C"]  # unscored last

    full = (await stub.GetExperiment(pb.GetExperimentRequest(id=b.id))).data.experiment
    assert [r.content for r in full.responses] == ["x", "y"] and full.responses[0].response_time == 1500


async def test_bulk_actions_are_all_or_nothing(stub):
    a = await create(stub, name="A", tags=["keep", "drop"])
    b = await create(stub, name="B")

    async def stored() -> dict:
        return {e.id: (list(e.tags), e.favorited)
                for e in (await stub.ListExperiments(pb.ListExperimentsRequest())).data.experiments}

    before = await stored()
    # An unknown id: 404 listing it, and the known ones are not changed either.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.BulkExperiments(pb.BulkExperimentsRequest(
            action="tag", experiment_ids=ids(a.id, b.id, 999999, 999998),
            params=params(tags=["new", "keep"], remove_tags=["drop"])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert violation(err.value) == {"not_found_ids": [999998.0, 999999.0]}
    assert "999998, 999999" in err.value.details()
    # A null, a string, a bad parameter: 400 naming it, nothing changed.
    for request, field in [
        (pb.BulkExperimentsRequest(action="delete", experiment_ids=ids(a.id, None)), "experiment_ids[1]"),
        (pb.BulkExperimentsRequest(action="favorite", experiment_ids=ids(a.id, str(b.id))), "experiment_ids[1]"),
        (pb.BulkExperimentsRequest(action="favorite", experiment_ids=ids(a.id), params=params(favourite=True)),
         "params.favourite"),
        (pb.BulkExperimentsRequest(action="favorite", experiment_ids=ids(a.id), params=params(favorited="yes")),
         "params.favorited"),
        (pb.BulkExperimentsRequest(action="shred", experiment_ids=ids(b.id)), "action"),
        (pb.BulkExperimentsRequest(action="archive"), "experiment_ids"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.BulkExperiments(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and violation(err.value)["field"] == field
    assert await stored() == before

    r = (await stub.BulkExperiments(pb.BulkExperimentsRequest(
        action="tag", experiment_ids=ids(a.id, b.id), params=params(tags=["new", "keep"], remove_tags=["drop"]),
    ))).data
    assert list(r.affected_ids) == [a.id, b.id] and r.affected_count == 2 and list(r.not_found_ids) == []
    assert {i: t for i, (t, _) in (await stored()).items()} == {a.id: ["keep", "new"], b.id: ["new", "keep"]}

    r = (await stub.BulkExperiments(pb.BulkExperimentsRequest(action="delete", experiment_ids=ids(a.id)))).data
    assert r.affected_count == 1
    assert list(await stored()) == [b.id]


async def test_model_must_be_registered(stub):
    made = await create(stub, model=" m2 ")
    assert made.model == "m2"
    for call in (stub.CreateExperiment(pb.CreateExperimentRequest(name="x", model="gpt-4", prompt="p")),
                 stub.UpdateExperiment(pb.UpdateExperimentRequest(id=made.id, name="changed", model="gpt-4"))):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violation(err.value) == {"field": "model", "value": "gpt-4",
                                        "constraint": "must be a registered model id (GET /api/models lists them)"}
    after = (await stub.GetExperiment(pb.GetExperimentRequest(id=made.id))).data.experiment
    assert (after.name, after.model, after.updated_at) == (made.name, "m2", made.updated_at)
    listed = (await stub.ListExperiments(pb.ListExperimentsRequest())).data.experiments
    assert [e.id for e in listed] == [made.id]  # the refused create stored nothing


async def test_unreachable_registry_is_503_not_a_silent_accept(app_factory, monkeypatch):
    from services.experiments.app import SPEC

    monkeypatch.setenv("LLMLAB_INFERENCE_TARGET", f"127.0.0.1:{free_port()}")  # nothing listens there
    app = await app_factory(SPEC)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.ExperimentServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await create(stub)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "model registry" in err.value.details() and "127.0.0.1" not in err.value.details()
            # Writes that do not name a model do not need the registry.
            assert (await stub.ListExperiments(pb.ListExperimentsRequest())).data.experiments == []
    finally:
        await app.stop()


async def test_names_are_trimmed_visible_and_bounded(stub):
    made = await create(stub, name="\u200b  Trimmed  \n", tags=[" t ", "t"])
    assert made.name == "Trimmed" and list(made.tags) == ["t"]
    for name in ("\u200b\u200c\u200d", "\u2060", " \t ", "x" * 256):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await create(stub, name=name)
        assert violation(err.value)["field"] == "name"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UpdateExperiment(pb.UpdateExperimentRequest(id=made.id, name="n" * 70_000))
    details = violation(err.value)
    assert details["field"] == "name" and details["value"].endswith("(70000 characters)")
