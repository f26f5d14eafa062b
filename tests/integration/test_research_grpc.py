"""The research view of the experiments store over gRPC (real Postgres, port 0): CRUD, 409 with existing_id, filters,
offset and cursor paging (stable under inserts), prompt templates, the lab view of the same rows."""

from __future__ import annotations

import base64
import uuid

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from llmlab.experiments.v1 import experiments_service_pb2 as lab_pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as lab_grpc
from llmlab.experiments.v1 import prompts_service_pb2 as ppb
from llmlab.experiments.v1 import prompts_service_pb2_grpc as ppb_grpc
from llmlab.experiments.v1 import research_experiments_service_pb2 as pb
from llmlab.experiments.v1 import research_experiments_service_pb2_grpc as pb_grpc

OWNER = "550e8400-e29b-41d4-a716-446655440000"


def _create(**body) -> pb.CreateResearchExperimentRequest:
    return json_format.ParseDict(body, pb.CreateResearchExperimentRequest())


def _violations(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    raw = dict(exc.trailing_metadata())["grpc-status-details-bin"]
    st = status_pb2.Status.FromString(raw)
    for d in st.details:
        if d.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            br = error_details_pb2.BadRequest()
            d.Unpack(br)
            return {v.field: v.description for v in br.field_violations}
    return {}


def _metadata(exc: grpc.aio.AioRpcError) -> dict[str, str]:
    st = status_pb2.Status.FromString(dict(exc.trailing_metadata())["grpc-status-details-bin"])
    for d in st.details:
        if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            d.Unpack(info)
            return dict(info.metadata)
    return {}


@pytest.fixture
def stub(experiments_channel):
    return pb_grpc.ResearchExperimentServiceStub(experiments_channel)


async def test_create_get_update_delete_and_conflict(stub, experiments_channel):
    body = {"name": "GPT-4 vs Claude", "description": "d", "hypothesis": "h", "owner_id": OWNER,
            "collaborators": ["550e8400-e29b-41d4-a716-446655440001"], "tags": ["comparison", "reasoning"],
            "config": {"parameters": {"temperature": 0.7, "max_tokens": 2048, "top_p": 0.95},
                       "evaluation_metrics": ["accuracy", "bleu", "latency"], "num_samples": 1000,
                       "random_seed": 42}}
    created = await stub.CreateResearchExperiment(_create(**body))
    as_json = json_format.MessageToDict(created, preserving_proto_field_name=True)
    assert as_json["status"] == "draft" and as_json["owner_id"] == OWNER
    assert as_json["config"]["num_samples"] == 1000 and as_json["config"]["parameters"]["top_p"] == 0.95
    uuid.UUID(created.id)

    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateResearchExperiment(_create(**body))
    assert exc.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _metadata(exc.value)["existing_id"] == created.id

    # The same row in the lab view: same name, description, tags, parameters.
    lab = lab_grpc.ExperimentServiceStub(experiments_channel)
    listed = await lab.ListExperiments(lab_pb.ListExperimentsRequest())
    item = next(e for e in listed.data.experiments if e.name == body["name"])
    assert list(item.tags) == ["comparison", "reasoning"] and item.parameters.max_tokens == 2048

    updated = await stub.UpdateResearchExperiment(json_format.ParseDict(
        {"id": created.id, "description": "Updated", "tags": ["a", "b"]}, pb.UpdateResearchExperimentRequest()))
    assert updated.description == "Updated" and list(updated.tags) == ["a", "b"] and updated.hypothesis == "h"
    assert updated.config["num_samples"] == 1000

    await stub.DeleteResearchExperiment(pb.DeleteResearchExperimentRequest(id=created.id))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.GetResearchExperiment(pb.GetResearchExperimentRequest(id=created.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateExperimentRun(pb.CreateExperimentRunRequest(id=created.id))
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


async def test_validation_names_every_field(stub):
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreateResearchExperiment(_create(name="", owner_id="nope", config={
            "parameters": {"temperature": 3}, "model_ids": ["x"], "evaluation_metrics": ["vibes"]}))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = _violations(exc.value)
    assert set(fields) >= {"name", "owner_id", "config.parameters.temperature", "config.model_ids[0]",
                           "config.evaluation_metrics"}, fields
    assert "between 0 and 2" in fields["config.parameters.temperature"]
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.GetResearchExperiment(pb.GetResearchExperimentRequest(id="not-a-uuid"))
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_start_without_config_is_unprocessable(stub):
    e = await stub.CreateResearchExperiment(_create(name="empty", owner_id=OWNER))
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.StartResearchExperiment(pb.StartResearchExperimentRequest(id=e.id))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no models configured" in exc.value.details()
    assert _metadata(exc.value)["http_status"] == "422"


async def test_filters_offset_links_and_stable_cursors(stub):
    other = str(uuid.uuid4())
    for i in range(7):
        await stub.CreateResearchExperiment(_create(name=f"e{i}", owner_id=OWNER, tags=["x", f"t{i % 2}"]))
    await stub.CreateResearchExperiment(_create(name="theirs", owner_id=other, tags=["x"]))

    page = await stub.ListResearchExperiments(pb.ListResearchExperimentsRequest(
        owner_id=OWNER, tags=["x,t0"], limit=2, offset=0))
    assert [e.name for e in page.data] == ["e6", "e4"]
    assert page.pagination.total == 4 and page.pagination.has_more
    assert page.links.next.string_value == f"/experiments?limit=2&offset=2&owner_id={OWNER}&tags=x%2Ct0"
    assert page.links.last.endswith("offset=2&owner_id=" + OWNER + "&tags=x%2Ct0")
    assert not page.HasField("page_info")

    first = await stub.ListResearchExperiments(pb.ListResearchExperimentsRequest(owner_id=OWNER, limit=3))
    assert [e.name for e in first.data] == ["e6", "e5", "e4"] and first.page_info.has_next_page
    # New rows arrive between pages: the cursor neither skips nor repeats.
    await stub.CreateResearchExperiment(_create(name="late", owner_id=OWNER))
    seen = [e.name for e in first.data]
    cursor = first.page_info.end_cursor
    while cursor:
        nxt = await stub.ListResearchExperiments(pb.ListResearchExperimentsRequest(
            owner_id=OWNER, limit=3, after=cursor))
        assert not nxt.HasField("pagination") and nxt.page_info.has_previous_page
        seen += [e.name for e in nxt.data]
        cursor = nxt.page_info.end_cursor if nxt.page_info.has_next_page else ""
    assert seen == ["e6", "e5", "e4", "e3", "e2", "e1", "e0"]

    forged = base64.urlsafe_b64encode(b'["nope", 1]').decode()
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.ListResearchExperiments(pb.ListResearchExperimentsRequest(after=forged))
    assert _violations(exc.value) == {"after": "is not a cursor this API issued"}


async def test_prompt_templates(experiments_channel):
    stub = ppb_grpc.PromptServiceStub(experiments_channel)
    t = await stub.CreatePrompt(json_format.ParseDict({
        "name": "CoT", "template": "Problem: {{ question }}\nAnswer in {{style}}.", "variables": ["question", "style"],
        "default_values": {"style": "one word"}}, ppb.CreatePromptRequest()))
    assert list(t.variables) == ["question", "style"]
    r = await stub.RenderPrompt(json_format.ParseDict(
        {"id": t.id, "variables": {"question": "{{style}} {% import os %}"}}, ppb.RenderPromptRequest()))
    assert r.rendered == "Problem: {{style}} {% import os %}\nAnswer in one word."
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.RenderPrompt(ppb.RenderPromptRequest(id=t.id))
    assert _violations(exc.value) == {"variables.question": "is required by the template (no value and no default)"}
    with pytest.raises(grpc.aio.AioRpcError) as exc:
        await stub.CreatePrompt(json_format.ParseDict(
            {"name": "bad", "template": "{{a}} {{b}}", "variables": ["a"]}, ppb.CreatePromptRequest()))
    assert "missing: b" in _violations(exc.value)["variables"]
    got = await stub.GetPrompt(ppb.GetPromptRequest(id=t.id))
    assert got.template == t.template
    listed = await stub.ListPrompts(ppb.ListPromptsRequest(limit=10))
    assert listed.pagination.total == 1 and listed.data[0].id == t.id
