"""Training jobs through the gateway (`/api/training`, docs/training.md): a real LoRA job on the training worker,
paused and resumed over HTTP, that ends with its fine-tuned model registered and answering on `/v1` and the lab.

Kept small: the built-in set (24 examples), 2 epochs of 6 steps, rank 2. The first run on a machine also creates
the training venv and the base fp32 checkpoint (about 75 s, cached afterwards)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator

import httpx
import pytest

from services.inference.artifacts import default_cache_dir

pytestmark = [pytest.mark.e2e, pytest.mark.training]


@pytest.fixture
def published() -> Iterator[list[str]]:
    """Fine-tuned models a test made: their artifacts leave the model cache afterwards."""
    ids: list[str] = []
    yield ids
    for model_id in ids:
        shutil.rmtree(default_cache_dir() / model_id, ignore_errors=True)


BASE = "smollm2-135m-instruct"
TINY = {"model_id": BASE, "epochs": 2, "batch_size": 4, "lora_r": 2, "lora_alpha": 4, "learning_rate": 0.001}


async def job(http: httpx.AsyncClient, job_id: int) -> dict:
    r = await http.get(f"/api/training/{job_id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["meta"]["request_id"]
    return body["data"]


async def wait_for(http: httpx.AsyncClient, job_id: int, until, within: float = 600) -> dict:
    deadline = time.monotonic() + within
    while True:
        data = await job(http, job_id)
        if until(data):
            return data
        assert data["status"] != "FAILED", data["logs"]
        assert time.monotonic() < deadline, data
        await asyncio.sleep(0.5)


@pytest.mark.timeout(900)  # a fresh machine also creates the training venv and base checkpoint
async def test_a_job_pauses_resumes_completes_and_its_model_is_served(http: httpx.AsyncClient,
                                                                     published: list[str]) -> None:
    r = await http.post("/api/training", json={**TINY, "job_name": "e2e LoRA"})
    assert r.status_code == 200, r.text
    created = r.json()["data"]
    assert created["status"] == "PENDING" and created["model_id"] == BASE and created["job_name"] == "e2e LoRA"
    assert created["message"] == "Training job created and started successfully"
    job_id = created["id"]

    listed = (await http.get("/api/training")).json()["data"]["training_jobs"]
    assert listed[0]["id"] == job_id and listed[0]["epochs"] == 2 and listed[0]["completed_at"] is None

    # Running with a loss: pause it; it checkpoints and frees the CPU.
    running = await wait_for(http, job_id, lambda d: d["status"] == "RUNNING" and d["current_loss"] is not None)
    assert running["started_at"] is not None and 0 < running["progress"] < 100
    r = await http.post(f"/api/training/{job_id}/pause", json={})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"id": job_id, "status": "PAUSED", "message": "Training job paused successfully"}
    again = await http.post(f"/api/training/{job_id}/pause", json={})
    assert again.status_code == 409, again.text
    assert again.json()["success"] is False and again.json()["error"]["code"] == "CONFLICT"
    paused = await wait_for(http, job_id, lambda d: "checkpoint saved" in d["logs"], within=120)
    assert paused["status"] == "PAUSED"
    step_at_pause = paused["progress"]
    await asyncio.sleep(2)
    assert (await job(http, job_id))["progress"] == step_at_pause  # nothing trains while paused

    r = await http.post(f"/api/training/{job_id}/resume", json={})
    assert r.status_code == 200, r.text
    assert r.json()["data"] == {"id": job_id, "status": "RUNNING", "message": "Training job resumed successfully"}
    assert (await http.post(f"/api/training/{job_id}/resume", json={})).status_code == 409

    done = await wait_for(http, job_id, lambda d: d["status"] == "COMPLETED")
    assert done["progress"] == 100 and done["completed_at"] is not None and done["current_epoch"] == 2
    assert "built-in instruction set" in done["logs"]
    assert "Epoch 1/2 completed with loss" in done["logs"] and "Epoch 2/2 completed with loss" in done["logs"]
    assert "resumed from checkpoint at step" in done["logs"]
    assert (await http.post(f"/api/training/{job_id}/pause", json={})).status_code == 409

    # The loop closes: a registered model over the base, loaded and answering.
    models = (await http.get("/api/models")).json()["data"]["models"]
    tuned = [m for m in models if m["id"].startswith(f"{BASE}-ft-") and m["base_model"] == BASE]
    assert tuned, models
    model_id = tuned[-1]["id"]
    published.append(model_id)
    r = await http.post(f"/api/models/{model_id}/generate", json={"prompt": "What is LoRA?", "max_length": 16})
    assert r.status_code == 200, r.text
    assert r.json()["data"]["model_id"] == model_id and r.json()["data"]["text"]
    r = await http.post("/v1/chat/completions", json={
        "model": model_id, "messages": [{"role": "user", "content": "What is an epoch in training?"}],
        "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model_id and r.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(("body", "status", "field"), [
    ({**TINY, "job_name": "x", "model_id": "no-such-model"}, 404, None),
    ({**TINY, "job_name": "x", "epochs": 0}, 400, "epochs"),
    ({**TINY, "job_name": "x", "epochs": 500}, 400, "epochs"),
    ({**TINY, "job_name": "x", "learning_rate": 5.0}, 400, "learning_rate"),
    ({**TINY, "job_name": "x", "lora_r": 1000}, 400, "lora_r"),
    ({**TINY, "job_name": "x", "lora_dropout": 1.0}, 400, "lora_dropout"),
    ({**TINY, "job_name": ""}, 400, "job_name"),
    ({**TINY, "job_name": "x", "training_file": "file-doesnotexist"}, 404, None),
])
async def test_bad_jobs_are_refused_in_the_lab_shape(http: httpx.AsyncClient, body, status, field) -> None:
    r = await http.post("/api/training", json=body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["success"] is False and err["meta"]["request_id"]
    if field:
        assert err["error"]["details"]["field"] == field


async def test_unknown_job_is_404_and_a_bad_file_is_reported_by_line(http: httpx.AsyncClient) -> None:
    r = await http.get("/api/training/987654")
    assert r.status_code == 404 and r.json()["success"] is False
    assert (await http.post("/api/training/987654/pause", json={})).status_code == 404
    bad = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' \
          b'{"messages": [{"role": "user", "content": "no answer"}]}\n' \
          b'{"messages": [{"role": "robot", "content": "beep"}, {"role": "assistant", "content": "x"}]}\n'
    up = await http.post("/v1/files", files={"file": ("bad.jsonl", bad)}, data={"purpose": "fine-tune"})
    assert up.status_code == 200, up.text
    r = await http.post("/api/training", json={**TINY, "job_name": "bad", "training_file": up.json()["id"]})
    assert r.status_code == 400, r.text
    errors = r.json()["error"]["details"]["errors"]
    assert errors[0].startswith("line 2: no assistant message") and errors[1].startswith("line 3: messages[0].role")
    other = await http.post("/v1/files", files={"file": ("b.jsonl", bad)}, data={"purpose": "assistants"})
    assert other.status_code == 200, other.text
    r = await http.post("/api/training", json={**TINY, "job_name": "bad", "training_file": other.json()["id"]})
    assert r.status_code == 400 and "purpose" in r.text
