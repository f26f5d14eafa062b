"""Bad input through Envoy: each refusal in its API family's error shape, with request_id; nothing stored changes."""

import pytest

VALID = {"name": "Bad input target", "model": "smollm2-135m-instruct", "prompt": "p",
         "parameters": {"temperature": 0.5}}


def assert_lab_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"success", "error", "meta"} and body["success"] is False
    assert set(body["error"]) == {"message", "statusCode", "code", "details"}
    assert body["error"]["statusCode"] == status and body["error"]["code"] == code
    assert body["error"]["message"]
    assert body["meta"]["request_id"] == r.headers["x-request-id"] != ""
    return body["error"]


@pytest.fixture
async def target(http, db):
    r = await http.post("/api/experiments", json=VALID)
    exp = r.json()["data"]["experiment"]
    before = await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"])
    count = await db.fetchval("SELECT count(*) FROM experiments")
    yield exp
    # Whatever the test sent, the stored row and the number of rows are unchanged.
    assert await db.fetchrow("SELECT * FROM experiments WHERE id = $1", exp["id"]) == before
    assert await db.fetchval("SELECT count(*) FROM experiments") == count


async def test_out_of_range_temperature_is_seed_000_validation_error(http, target):
    r = await http.post("/api/experiments", json={**VALID, "parameters": {"temperature": 3.0}})
    err = assert_lab_error(r, 400, "VALIDATION_ERROR")
    assert err["message"] == "Validation failed"
    assert err["details"] == {"field": "temperature", "value": 3.0, "constraint": "must be between 0 and 2"}
    r = await http.put(f"/api/experiments/{target['id']}", json={"name": "changed", "parameters": {"top_p": 7}})
    assert assert_lab_error(r, 400, "VALIDATION_ERROR")["details"]["field"] == "top_p"


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "x", ',                                   # malformed JSON
        b'["not", "an", "object"]',                          # wrong top-level type
        b'{"name": "x", "parameters": {"temperature": "hot"}}',  # wrong type for a number
        b'{"name": 5, "model": "m", "prompt": "p"}',        # wrong type for a string
        b'{"name": "x", "response_count": 1.5}',             # fraction for an integer
        b'{"name": "x", "parameters": [0.5]}',               # list for an object
    ],
)
async def test_malformed_and_mistyped_bodies(http, target, body):
    r = await http.post("/api/experiments", content=body, headers={"content-type": "application/json"})
    assert_lab_error(r, 400, "VALIDATION_ERROR")
    r = await http.put(f"/api/experiments/{target['id']}", content=body, headers={"content-type": "application/json"})
    assert_lab_error(r, 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("over", "field"),
    [({"name": ""}, "name"), ({"model": ""}, "model"), ({"type": "triple"}, "type"),
     ({"response_count": 0}, "response_count"),
     ({"parameter_ranges": {"temperature_min": 1.5, "temperature_max": 0.5}}, "temperature_min")],
)
async def test_semantic_validation_names_the_field(http, target, over, field):
    err = assert_lab_error(await http.post("/api/experiments", json={**VALID, **over}), 400, "VALIDATION_ERROR")
    assert err["details"]["field"] == field and err["details"]["constraint"]


async def test_bad_query_parameters(http, target):
    for params, field in [({"limit": 1000}, "limit"), ({"page": 0}, "page"), ({"sort_by": "cost"}, "sort_by"),
                          ({"date_from": "last week"}, "date_from"), ({"status": "done"}, "status")]:
        err = assert_lab_error(await http.get("/api/experiments", params=params), 400, "VALIDATION_ERROR")
        assert err["details"]["field"] == field
    assert_lab_error(await http.get("/api/experiments", params={"limit": "ten"}), 400, "VALIDATION_ERROR")
    assert_lab_error(await http.get("/api/experiments/history", params={"view_mode": "3d"}), 400, "VALIDATION_ERROR")


async def test_unknown_ids_and_bad_ids(http, target):
    err = assert_lab_error(await http.get("/api/experiments/2147480000"), 404, "EXPERIMENT_NOT_FOUND")
    assert err["message"] == "Experiment with ID 2147480000 not found"
    assert_lab_error(await http.put("/api/experiments/2147480000", json={"name": "x"}), 404, "EXPERIMENT_NOT_FOUND")
    assert_lab_error(await http.delete("/api/experiments/2147480000"), 404, "EXPERIMENT_NOT_FOUND")
    assert_lab_error(await http.get("/api/experiments/abc"), 400, "VALIDATION_ERROR")


@pytest.mark.parametrize(
    ("path", "family"),
    [("/api/no-such-thing", "lab"), ("/v1/no-such-thing", "serving"), ("/api/v1/no-such-thing", "native"),
     ("/no-such-thing", "research")],
)
async def test_unknown_paths_are_404_in_the_family_shape(http, path, family):
    r = await http.get(path)
    assert r.status_code == 404
    body = r.json()
    rid = r.headers["x-request-id"]
    if family == "lab":
        assert body["success"] is False and body["error"]["code"] == "NOT_FOUND" and body["meta"]["request_id"] == rid
    elif family == "serving":
        assert set(body) == {"error", "request_id"} and body["request_id"] == rid
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "invalid_request_error"
    elif family == "native":
        assert body["error"]["code"] == "NOT_FOUND" and body["request_id"] == rid
        assert set(body["error"]) == {"code", "message", "details"}
    else:
        assert body["error"] == "not_found" and body["message"] and body["request_id"] == rid


async def test_oversized_body_is_413(http, target):
    big = {**VALID, "prompt": "x" * (2 * 1024 * 1024)}
    assert_lab_error(await http.post("/api/experiments", json=big), 413, "PAYLOAD_TOO_LARGE")
