"""The lab experiments resource through Envoy with plain HTTP in the lab family's shapes: CRUD, history, bulk."""

import asyncio
import datetime as dt
import time

import pytest

from llmlab.experiments.v1 import experiments_service_pb2 as pb
from llmlab.experiments.v1 import experiments_service_pb2_grpc as pb_grpc

from .test_bad_input import assert_lab_error

LIST_KEYS = {
    "id", "name", "description", "type", "status", "model", "prompt", "parameters", "quality_score",
    "response_count", "total_cost", "duration", "created_at", "updated_at", "tags", "favorited", "archived",
}
PARAMETER_KEYS = {"temperature", "top_p", "max_tokens", "frequency_penalty", "presence_penalty"}
SEED_CREATE = {
    "name": "Response Quality  Test",
    "description": "Testing Response Quality  parameters",
    "type": "single",
    "model": "smollm2-135m-instruct",
    "prompt": "Write a short story about AI discovering emotions",
    "parameters": {"temperature": 0.8, "top_p": 0.9, "max_tokens": 1000, "frequency_penalty": 0.0,
                   "presence_penalty": 0.0},
    "parameter_ranges": {
        "temperature_min": 0.1, "temperature_max": 1.0, "temperature_step": 0.1,
        "top_p_min": 0.1, "top_p_max": 1.0, "top_p_step": 0.1,
        "frequency_penalty_min": 0.0, "frequency_penalty_max": 0.0,
        "presence_penalty_min": 0.0, "presence_penalty_max": 0.0,
    },
    "response_count": 1,
    "tags": ["creative", "test"],
}


def is_timestamp(text: str) -> bool:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ") is not None


async def create(http, **over) -> dict:
    r = await http.post("/api/experiments", json={**SEED_CREATE, **over})
    assert r.status_code == 200, r.text
    return r.json()["data"]["experiment"]


async def test_create_is_the_seed_shape(http):
    r = await http.post("/api/experiments", json=SEED_CREATE)
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and set(body) == {"success", "data", "meta"}
    assert body["meta"]["request_id"] == r.headers["x-request-id"] and is_timestamp(body["meta"]["timestamp"])
    exp = body["data"]["experiment"]
    assert set(exp) == LIST_KEYS | {"parameter_ranges", "responses"}
    assert isinstance(exp["id"], int) and exp["status"] == "draft"
    assert exp["parameters"] == SEED_CREATE["parameters"]
    assert exp["parameter_ranges"] == SEED_CREATE["parameter_ranges"]
    assert exp["quality_score"] is None and exp["duration"] is None and exp["responses"] == []
    assert exp["total_cost"] == 0 and exp["tags"] == ["creative", "test"]
    assert exp["favorited"] is False and exp["archived"] is False
    assert is_timestamp(exp["created_at"]) and exp["created_at"] == exp["updated_at"]


async def test_get_update_delete_round_trip(http, db):
    exp = await create(http, name="Round trip")
    r = await http.get(f"/api/experiments/{exp['id']}")
    assert r.status_code == 200 and r.json()["data"]["experiment"] == exp

    r = await http.put(f"/api/experiments/{exp['id']}", json={"description": "new", "parameters": {"top_p": 0.5}})
    assert r.status_code == 200
    updated = r.json()["data"]["experiment"]
    assert updated["description"] == "new" and updated["name"] == "Round trip"
    assert updated["parameters"] == {**SEED_CREATE["parameters"], "top_p": 0.5}

    r = await http.delete(f"/api/experiments/{exp['id']}")
    assert r.status_code == 200
    assert r.json()["data"] == {"message": "Experiment deleted successfully", "deleted_id": exp["id"]}
    assert await db.fetchval("SELECT count(*) FROM experiments WHERE id = $1", exp["id"]) == 0
    assert (await http.get(f"/api/experiments/{exp['id']}")).status_code == 404


async def test_list_query_parameters_and_pagination(http, db):
    tag = f"list-{dt.datetime.now().timestamp()}"
    made = [await create(http, name=f"Zeta {tag} {i}", tags=[tag], type="batch" if i == 2 else "single")
            for i in range(3)]
    await db.execute("UPDATE experiments SET created_at = '2023-01-15T08:00:00Z' WHERE id = $1", made[0]["id"])
    await http.put(f"/api/experiments/{made[1]['id']}", json={"status": "completed"})

    r = await http.get("/api/experiments", params={"search": tag, "limit": 2, "sort_by": "name", "sort_order": "asc"})
    body = r.json()
    assert [e["name"] for e in body["data"]["experiments"]] == [f"Zeta {tag} 0", f"Zeta {tag} 1"]
    assert all(set(e) == LIST_KEYS and set(e["parameters"]) == PARAMETER_KEYS for e in body["data"]["experiments"])
    assert body["meta"]["pagination"] == {"page": 1, "limit": 2, "total": 3, "total_pages": 2,
                                          "has_next": True, "has_previous": False}
    page2 = (await http.get("/api/experiments", params={"search": tag, "limit": 2, "page": 2,
                                                        "sort_by": "name", "sort_order": "asc"})).json()
    assert [e["id"] for e in page2["data"]["experiments"]] == [made[2]["id"]]
    assert page2["meta"]["pagination"]["has_previous"] is True

    async def ids(**params):
        r = await http.get("/api/experiments", params={"search": tag, **params})
        assert r.status_code == 200, r.text
        return sorted(e["id"] for e in r.json()["data"]["experiments"])

    assert await ids(type="batch") == [made[2]["id"]]
    assert await ids(status="completed") == [made[1]["id"]]
    assert await ids(model="smollm2-135m-instruct") == sorted(e["id"] for e in made)
    assert await ids(model="gpt-4") == []
    assert await ids(date_from="2023-01-01", date_to="2023-01-31") == [made[0]["id"]]
    assert await ids(date_from="2023-01-16T00:00:00Z") == sorted(e["id"] for e in made[1:])
    newest_first = (await http.get("/api/experiments", params={"search": tag})).json()["data"]["experiments"]
    assert newest_first[-1]["id"] == made[0]["id"]


async def test_history_with_timeline(http, db):
    tag = f"hist-{dt.datetime.now().timestamp()}"
    a = await create(http, name=f"{tag} a", tags=[tag])
    b = await create(http, name=f"{tag} b", tags=[tag])
    await db.execute("UPDATE experiments SET created_at = '2024-10-30T10:15:00Z' WHERE id = $1", a["id"])
    await db.execute(
        "INSERT INTO responses (experiment_id, content, overall_quality, cost, response_time_ms) "
        "VALUES ($1, 'Once upon a time...', 94.2, 0.023, 3200)", a["id"])
    r = await http.post("/api/experiments/bulk", json={"action": "favorite", "experiment_ids": [a["id"]],
                                                        "params": {"favorited": True}})
    assert r.status_code == 200
    assert r.json()["data"] == {"action": "favorite", "affected_ids": [a["id"]], "affected_count": 1,
                                "not_found_ids": []}

    body = (await http.get("/api/experiments/history", params={"search": tag, "view_mode": "timeline"})).json()
    assert body["success"] and body["meta"]["pagination"]["total"] == 2
    first = next(e for e in body["data"]["experiments"] if e["id"] == a["id"])
    assert first == {
        "id": a["id"], "name": f"{tag} a", "type": "single", "status": "draft", "model": "smollm2-135m-instruct",
        "quality_score": 94.2, "created_at": "2024-10-30T10:15:00Z", "tags": [tag], "favorited": True,
        "archived": False, "summary": {"response_count": 1, "total_cost": 0.023, "duration": "3.2s"},
    }
    timeline = body["data"]["timeline_data"]
    assert timeline[-1] == {"date": "2024-10-30", "experiments": [a["id"]], "total_quality": 94.2,
                            "experiment_count": 1}
    assert timeline[0]["experiments"] == [b["id"]] and timeline[0]["total_quality"] is None

    fav = (await http.get("/api/experiments/history", params={"search": tag, "favorited": "true"})).json()
    assert [e["id"] for e in fav["data"]["experiments"]] == [a["id"]]


@pytest.mark.parametrize("action", ["archive", "delete"])
async def test_bulk_archive_and_delete(http, db, action):
    a = await create(http, name=f"bulk {action}")
    # An unknown id: 404 listing it, and nothing changed (all or nothing).
    r = await http.post("/api/experiments/bulk", json={"action": action, "experiment_ids": [a["id"], 987654]})
    err = assert_lab_error(r, 404, "EXPERIMENT_NOT_FOUND")
    assert err["details"] == {"not_found_ids": [987654]} and "987654" in err["message"]
    row = await db.fetchrow("SELECT archived FROM experiments WHERE id = $1", a["id"])
    assert row is not None and row["archived"] is False
    r = await http.post("/api/experiments/bulk", json={"action": action, "experiment_ids": [a["id"]]})
    assert r.status_code == 200
    assert r.json()["data"] == {"action": action, "affected_ids": [a["id"]], "affected_count": 1, "not_found_ids": []}
    row = await db.fetchrow("SELECT archived FROM experiments WHERE id = $1", a["id"])
    assert (row is None) if action == "delete" else row["archived"]


@pytest.mark.parametrize("action", ["delete", "archive"])
async def test_a_null_id_refuses_the_whole_bulk_request(http, db, action):
    """The transcoder drops a null inside a typed list; the bulk body keeps it, so the service refuses it."""
    a = await create(http, name=f"null {action}")
    before = await db.fetchrow("SELECT * FROM experiments WHERE id = $1", a["id"])
    r = await http.post("/api/experiments/bulk", json={"action": action, "experiment_ids": [a["id"], None]})
    err = assert_lab_error(r, 400, "VALIDATION_ERROR")
    assert err["details"] == {"field": "experiment_ids[1]", "value": None,
                              "constraint": "must be a positive integer experiment id"}
    assert await db.fetchrow("SELECT * FROM experiments WHERE id = $1", a["id"]) == before  # still there, unchanged


@pytest.mark.parametrize(
    ("body", "field", "constraint"),
    [
        ({"action": "favorite", "experiment_ids": ["{id}"]}, "experiment_ids[0]",
         "must be a positive integer experiment id"),
        ({"action": "favorite", "experiment_ids": [1.5]}, "experiment_ids[0]",
         "must be a positive integer experiment id"),
        ({"action": "favorite", "experiment_ids": []}, "experiment_ids", "must hold between 1 and 1000 ids"),
        ({"action": "favorite", "experiment_ids": None}, "experiment_ids",
         "is required: a list of 1 to 1000 experiment ids"),
        ({"action": "favorite", "params": {"favourite": True}}, "params.favourite",
         "is not a parameter of the favorite action; it takes favorited"),
        ({"action": "favorite", "params": {"favorited": "yes"}}, "params.favorited", "must be true or false"),
        ({"action": "archive", "params": {"archived": None}}, "params.archived", "must be true or false"),
        ({"action": "tag", "params": {"tags": ["ok", None]}}, "params.tags", "must be a string"),
        ({"action": "tag", "params": {"tags": ["\u200b"]}}, "params.tags",
         "must contain a visible character (not only spaces, zero-width or control characters)"),
        ({"action": "delete", "params": {"cascade": True}}, "params.cascade",
         "is not a parameter of the delete action; it takes no parameters"),
        ({"action": "explode"}, "action", "must be one of favorite, unfavorite, archive, unarchive, delete, tag"),
    ],
)
async def test_every_bulk_field_is_checked_before_anything_changes(http, db, body, field, constraint):
    a = await create(http, name="bulk target", tags=["t"])
    before = await db.fetchrow("SELECT * FROM experiments WHERE id = $1", a["id"])
    request = {"experiment_ids": [a["id"]], **body}
    if request["experiment_ids"] == ["{id}"]:
        request["experiment_ids"] = [str(a["id"])]  # "7" for 7: a string is not an id
    err = assert_lab_error(await http.post("/api/experiments/bulk", json=request), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == field and err["details"]["constraint"] == constraint
    assert await db.fetchrow("SELECT * FROM experiments WHERE id = $1", a["id"]) == before


async def test_model_is_checked_against_the_registry(http, db):
    r = await http.post("/api/experiments", json={**SEED_CREATE, "model": "gpt-4"})
    err = assert_lab_error(r, 400, "VALIDATION_ERROR")
    assert err["message"] == "Validation failed"
    assert err["details"] == {"field": "model", "value": "gpt-4",
                              "constraint": "must be a registered model id (GET /api/models lists them)"}
    exp = await create(http, name="model check")
    before = await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"])
    r = await http.put(f"/api/experiments/{exp['id']}", json={"name": "renamed", "model": "no-such-model"})
    assert assert_lab_error(r, 400, "VALIDATION_ERROR")["details"]["field"] == "model"
    assert await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"]) == before
    r = await http.put(f"/api/experiments/{exp['id']}", json={"model": " smollm2-135m-instruct "})
    assert r.status_code == 200 and r.json()["data"]["experiment"]["model"] == "smollm2-135m-instruct"


@pytest.mark.parametrize("name", ["\u200b\u200b\u200b", "\u200c\u200d\u2060\ufeff", " \t\n ", "\u3000"])
async def test_a_name_without_a_visible_character_is_refused(http, db, name):
    count = await db.fetchval("SELECT count(*) FROM experiments")
    err = assert_lab_error(await http.post("/api/experiments", json={**SEED_CREATE, "name": name}), 400,
                           "VALIDATION_ERROR")
    assert err["details"]["field"] == "name" and "visible character" in err["details"]["constraint"]
    assert await db.fetchval("SELECT count(*) FROM experiments") == count


async def test_names_are_trimmed_and_long_ones_refused_quickly_without_being_quoted(http, db):
    exp = await create(http, name="\u200b  Trimmed name \n", tags=["  spaced  "])
    assert exp["name"] == "Trimmed name" and exp["tags"] == ["spaced"]
    before = await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"])
    for body in ({"name": "x" * 256}, {"name": "y" * 70_000}, {"tags": ["t" * 65]}, {"description": "d" * 10_001}):
        started = time.monotonic()
        r, *others = await asyncio.gather(
            http.put(f"/api/experiments/{exp['id']}", json=body),
            *(http.get("/api/experiments", params={"limit": 1}) for _ in range(8)),
        )
        err = assert_lab_error(r, 400, "VALIDATION_ERROR")
        assert err["details"]["field"] == next(iter(body)) and len(r.content) < 1000
        assert all(o.status_code == 200 for o in others)
        assert time.monotonic() - started < 5
    assert await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"]) == before


async def test_one_store_for_grpc_and_rest(http, platform):
    """An internal caller over gRPC and a browser over REST see the same experiment."""
    async with platform.channel("experiments") as channel:
        stub = pb_grpc.ExperimentServiceStub(channel)
        made = (await stub.CreateExperiment(pb.CreateExperimentRequest(
            name="via grpc", model="smollm2-135m-instruct", prompt="p", tags=["grpc"]))).data.experiment
        r = await http.get(f"/api/experiments/{made.id}")
        assert r.json()["data"]["experiment"]["name"] == "via grpc"
        await http.put(f"/api/experiments/{made.id}", json={"name": "via rest"})
        again = (await stub.GetExperiment(pb.GetExperimentRequest(id=made.id))).data.experiment
        assert again.name == "via rest"
