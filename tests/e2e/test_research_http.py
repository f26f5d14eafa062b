"""The research lab through Envoy (docs/research.md): experiments over a real dataset and prompt template, started,
run on the experiments worker with the embedded model, evaluated and aggregated; the documented error shapes.
Small counts: 3 sampled rows, 8 tokens each."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid

import pytest

from .test_files_http import put

MODEL = "smollm2-135m-instruct"
ROWS = [{"id": str(i), "question": f"What is {i} plus {i}?", "answer": str(2 * i)} for i in range(6)]
EXPERIMENT_KEYS = {"id", "name", "description", "hypothesis", "owner_id", "collaborators", "tags", "status", "config",
                   "created_at", "updated_at", "archived_at", "metadata"}
RUN_KEYS = {"id", "experiment_id", "status", "config", "started_at", "completed_at", "error", "progress", "outputs"}


async def upload_dataset(http, rows: list[dict], name: str) -> str:
    r = await http.post("/datasets", json={"name": name, "format": "jsonl"})
    assert r.status_code == 200, r.text
    d = r.json()
    r = await http.post(f"/datasets/{d['id']}/upload", json={"filename": "rows.jsonl",
                                                              "content_type": "application/jsonl"})
    body = "".join(json.dumps(x) + "\n" for x in rows).encode()
    assert (await put(r.json()["upload_url"], body)).status_code == 200
    return d["id"]


async def model_uuid(http) -> str:
    r = await http.get("/models", params={"limit": 100})
    assert r.status_code == 200, r.text
    return next(m["id"] for m in r.json()["data"] if m["model_identifier"] == MODEL)


@pytest.fixture(scope="module")
async def lab(http):
    """A registered model, a dataset with answers, one without, and a template."""
    dataset = await upload_dataset(http, ROWS, "Sums")
    no_answers = await upload_dataset(http, [{"question": "q"}], "No answers")
    r = await http.post("/prompts", json={"name": f"Sum {uuid.uuid4().hex[:6]}", "template": "Q: {{question}}\nA:",
                                          "variables": ["question"]})
    assert r.status_code == 201, r.text
    return {"model": await model_uuid(http), "dataset": dataset, "no_answers": no_answers, "template": r.json()["id"]}


def assert_error(r, status: int, error: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == error and body["message"] and body["request_id"], body
    return body


async def test_create_answers_201_and_conflict_names_the_existing_one(http):
    owner = str(uuid.uuid4())
    body = {"name": "GPT-4 vs Claude Comparison", "description": "d", "hypothesis": "h", "owner_id": owner,
            "collaborators": [str(uuid.uuid4())], "tags": ["comparison", "reasoning"],
            "config": {"parameters": {"temperature": 0.7, "max_tokens": 2048, "top_p": 0.95},
                       "evaluation_metrics": ["accuracy", "bleu", "latency"], "num_samples": 1000, "random_seed": 42}}
    r = await http.post("/experiments", json=body)
    assert r.status_code == 201, r.text
    e = r.json()
    assert set(e) == EXPERIMENT_KEYS and e["status"] == "draft" and e["archived_at"] is None and e["metadata"] == {}
    assert e["config"]["num_samples"] == 1000 and e["config"]["parameters"]["max_tokens"] == 2048
    conflict = assert_error(await http.post("/experiments", json=body), 409, "conflict")
    assert conflict["existing_id"] == e["id"]

    r = await http.put(f"/experiments/{e['id']}", json={"description": "Updated", "tags": ["a"]})
    assert r.status_code == 200 and r.json()["description"] == "Updated" and r.json()["hypothesis"] == "h"
    assert (await http.delete(f"/experiments/{e['id']}")).status_code == 200
    assert_error(await http.get(f"/experiments/{e['id']}"), 404, "not_found")
    assert_error(await http.post(f"/experiments/{e['id']}/runs", json={}), 404, "not_found")


async def test_errors_in_the_documented_shapes(http):
    r = await http.post("/experiments", json={"name": "", "config": {"parameters": {"temperature": 3}}})
    body = assert_error(r, 400, "validation_error")
    assert body["details"]["fields"]["config.parameters.temperature"] == "Temperature must be between 0 and 2"
    assert "name" in body["details"]["fields"]
    assert_error(await http.get("/experiments/not-a-uuid"), 400, "validation_error")
    assert_error(await http.get(f"/experiments/{uuid.uuid4()}"), 404, "not_found")
    # the transcoder's own refusals use the same shape
    body = assert_error(await http.post("/experiments", json={"name": 5, "tags": "x"}), 400, "validation_error")
    assert set(body["details"]) == {"fields"}
    # POST /models's 400 is aligned with the family
    body = assert_error(await http.post("/models", json={"name": "", "provider": "openai"}), 400, "validation_error")
    assert set(body["details"]) == {"fields"}


async def test_list_filters_offset_links_and_cursor(http):
    owner, tag = str(uuid.uuid4()), f"t{uuid.uuid4().hex[:6]}"
    ids = []
    for i in range(3):
        r = await http.post("/experiments", json={"name": f"list {i}", "owner_id": owner, "tags": [tag, "x"]})
        ids.append(r.json()["id"])
    r = await http.get("/experiments", params={"owner_id": owner, "tags": f"{tag},x", "limit": 2, "offset": 0})
    page = r.json()
    assert [e["id"] for e in page["data"]] == ids[::-1][:2]
    assert page["pagination"] == {"total": 3, "limit": 2, "offset": 0, "has_more": True}
    assert page["links"]["next"] == f"/experiments?limit=2&offset=2&owner_id={owner}&tags={tag}%2Cx"
    r = await http.get(page["links"]["next"])
    assert [e["id"] for e in r.json()["data"]] == ids[:1] and r.json()["links"]["next"] is None

    first = (await http.get("/experiments", params={"owner_id": owner, "limit": 2})).json()
    assert first["page_info"]["has_next_page"] is True
    await http.post("/experiments", json={"name": "list late", "owner_id": owner})
    rest = (await http.get("/experiments", params={"owner_id": owner, "limit": 2,
                                                   "after": first["page_info"]["end_cursor"]})).json()
    assert set(rest) == {"data", "page_info"}
    assert [e["id"] for e in first["data"] + rest["data"]] == ids[::-1]
    assert_error(await http.get("/experiments", params={"after": "bm9wZQ"}), 400, "validation_error")


async def test_start_refuses_what_cannot_run(http, lab):
    e = (await http.post("/experiments", json={"name": f"s {uuid.uuid4()}", "config": {
        "model_ids": [lab["model"]], "prompt_template_ids": [lab["template"]]}})).json()
    body = assert_error(await http.post(f"/experiments/{e['id']}/start", json={}), 422, "unprocessable_entity")
    assert body["message"] == "Cannot start experiment: no datasets configured (config.dataset_ids)"
    await http.put(f"/experiments/{e['id']}", json={"config": {
        "model_ids": [lab["model"]], "prompt_template_ids": [lab["template"]], "dataset_ids": [lab["no_answers"]],
        "evaluation_metrics": ["accuracy"]}})
    body = assert_error(await http.post(f"/experiments/{e['id']}/start", json={}), 422, "unprocessable_entity")
    assert "lack the answer field 'answer'" in body["message"]
    assert (await http.get(f"/experiments/{e['id']}")).json()["status"] == "draft"  # nothing half-done


async def wait_run(http, experiment_id: str, run_id: str, within_s: float = 240) -> dict:
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        run = (await http.get(f"/experiments/{experiment_id}/runs/{run_id}")).json()
        if run["status"] in ("completed", "failed") or asyncio.get_running_loop().time() > deadline:
            return run
        await asyncio.sleep(0.5)


async def test_a_run_runs_is_evaluated_and_aggregated(http, lab):
    r = await http.post("/experiments", json={"name": f"run {uuid.uuid4()}", "config": {
        "model_ids": [lab["model"]], "dataset_ids": [lab["dataset"]], "prompt_template_ids": [lab["template"]],
        "parameters": {"temperature": 0.7, "max_tokens": 8}, "num_samples": 3, "random_seed": 7}})
    e = r.json()
    started = (await http.post(f"/experiments/{e['id']}/start", json={})).json()
    assert set(started) == {"id", "status", "started_at"} and started["status"] == "running"

    r = await http.post(f"/experiments/{e['id']}/runs", json={"config_overrides": {"parameters": {"temperature": 0}}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert set(run) == RUN_KEYS and run["status"] == "pending" and run["completed_at"] is None
    assert run["config"]["parameters"] == {"temperature": 0, "max_tokens": 8}  # deep-merged
    done = await wait_run(http, e["id"], run["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == {"total": 3, "completed": 3, "failed": 0}
    outputs = done["outputs"]
    assert outputs["samples"] == 3 and outputs["generations"] == 3 and len(outputs["examples"]) == 3
    m = outputs["metrics"]
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["exact_match"] <= 1 and m["total_tokens"] > 0
    assert m["latency_p50_ms"] <= m["latency_p95_ms"] <= m["latency_p99_ms"] and m["tokens_per_second"] > 0

    # The same seed samples the same rows.
    second = (await http.post(f"/experiments/{e['id']}/runs", json={})).json()
    again = await wait_run(http, e["id"], second["id"])
    assert sorted(x["row_index"] for x in again["outputs"]["examples"]) == \
        sorted(x["row_index"] for x in outputs["examples"])

    listed = (await http.get(f"/experiments/{e['id']}/runs")).json()
    assert [x["id"] for x in listed["data"]] == [second["id"], run["id"]] and listed["pagination"]["total"] == 2

    metrics = (await http.get(f"/experiments/{e['id']}/metrics")).json()
    assert metrics["experiment_id"] == e["id"] and [x["run_id"] for x in metrics["runs"]] == [run["id"], second["id"]]
    acc = metrics["aggregated_metrics"]["accuracy"]
    values = [x["metrics"]["accuracy"] for x in metrics["runs"]]
    assert acc["count"] == 2 and acc["min"] == min(values) and acc["max"] == max(values)
    assert acc["mean"] == pytest.approx(sum(values) / 2)

    # A run executed elsewhere is recorded with POST /evaluations; finished runs refuse another ending.
    ev = {"experiment_id": e["id"], "run_id": run["id"], "metrics": {"accuracy": 0.847, "latency_p50_ms": 1250,
                                                                        "total_tokens": 125000, "cost_usd": 12.5},
          "metadata": {"evaluator_version": "1.2.0", "batch_size": 32}}
    r = await http.post("/evaluations", json=ev)
    assert r.status_code == 201, r.text
    got = r.json()
    assert set(got) == {"id", "experiment_id", "run_id", "metrics", "metadata", "created_at"}
    assert got["metrics"] == ev["metrics"] and got["metadata"] == ev["metadata"]
    assert_error(await http.post("/evaluations", json={**ev, "run_id": str(uuid.uuid4())}), 404, "not_found")
    assert_error(await http.post(f"/experiments/{e['id']}/runs/{run['id']}/complete", json={}), 422,
                 "unprocessable_entity")


async def test_external_runs_complete_and_fail(http, lab):
    e = (await http.post("/experiments", json={"name": f"ext {uuid.uuid4()}"})).json()
    assert_error(await http.post(f"/experiments/{e['id']}/runs/{uuid.uuid4()}/complete", json={}), 404, "not_found")
    assert_error(await http.post(f"/experiments/{e['id']}/runs/nope/fail", json={"error": "x"}), 400,
                 "validation_error")


async def test_prompt_templates_validate_and_render_safely(http):
    body = assert_error(await http.post("/prompts", json={"name": "p", "template": "{{a}} {{b}}", "variables": ["a"]}),
                        400, "validation_error")
    assert "b" in body["details"]["fields"]["variables"]
    r = await http.post("/prompts", json={"name": "p", "template": "Hi {{ name }}, {{greeting}}",
                                          "variables": ["name", "greeting"], "default_values": {"greeting": "welcome"}})
    t = r.json()
    r = await http.post(f"/prompts/{t['id']}/render", json={"variables": {"name": "{{greeting}} {{__import__}}"}})
    assert r.json() == {"rendered": "Hi {{greeting}} {{__import__}}, welcome"}
    body = assert_error(await http.post(f"/prompts/{t['id']}/render", json={"variables": {}}), 400,
                        "validation_error")
    assert list(body["details"]["fields"]) == ["variables.name"]
    assert (await http.get(f"/prompts/{t['id']}")).json()["template"] == t["template"]
    assert t["id"] in [x["id"] for x in (await http.get("/prompts", params={"limit": 100})).json()["data"]]


def worker_pid(platform) -> int:
    """The experiments worker's current pid, from its `service started` log line."""
    pids = [int(m.group(1)) for line in platform.logs.text().splitlines()
            if "experiments-worker" in line and "service started" in line
            for m in [re.search(r'"pid": ?(\d+)', line)] if m]
    assert pids, "no experiments-worker start line in the platform's log"
    return pids[-1]


async def test_a_run_survives_its_worker_killed(http, lab, platform, db):
    """kill -9 of the worker mid-run: the restarted worker reclaims the message and resumes the run; every
    generation is stored exactly once."""
    e = (await http.post("/experiments", json={"name": f"kill {uuid.uuid4()}", "config": {
        "model_ids": [lab["model"]], "dataset_ids": [lab["dataset"]], "prompt_template_ids": [lab["template"]],
        "parameters": {"temperature": 0.7, "max_tokens": 32}, "num_samples": 6, "random_seed": 3}})).json()
    run = (await http.post(f"/experiments/{e['id']}/runs", json={})).json()
    victim = worker_pid(platform)
    for _ in range(400):
        seen = (await http.get(f"/experiments/{e['id']}/runs/{run['id']}")).json()
        if seen["status"] == "running" and seen["progress"]["total"]:
            break
        await asyncio.sleep(0.025)
    assert seen["status"] == "running", seen
    os.kill(victim, signal.SIGKILL)
    done = await wait_run(http, e["id"], run["id"])
    assert done["status"] == "completed", done
    assert done["progress"] == {"total": 6, "completed": 6, "failed": 0}
    stored = await db.fetch("SELECT sample_key FROM experiment_run_outputs WHERE run_id = $1::uuid", run["id"])
    assert len(stored) == 6 == len({r["sample_key"] for r in stored})
    assert await db.fetchval("SELECT attempt FROM experiment_runs WHERE id = $1::uuid", run["id"]) == 2
    assert worker_pid(platform) != victim
    metrics = (await http.get(f"/experiments/{e['id']}/metrics")).json()
    assert [r["run_id"] for r in metrics["runs"]] == [run["id"]]  # one evaluation


async def test_401_and_403_in_the_research_shape(http, anonymous):
    assert_error(await anonymous.get("/experiments"), 401, "unauthorized")
    key = (await http.post("/v1/auth/api-keys", json={"name": "read only", "permissions": ["experiments:read"]})).json()
    r = await anonymous.post("/experiments", json={"name": "nope"}, headers={"x-api-key": key["api_key"]})
    assert assert_error(r, 403, "forbidden")["required_permission"] == "experiments:write"
    assert (await anonymous.get("/experiments", headers={"x-api-key": key["api_key"]})).status_code == 200
