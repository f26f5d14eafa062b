"""The loop closed with the `openai` SDK alone, through the gateway (docs/training.md "The proof"): upload a training
file, create a fine-tuning job, watch its events, chat with the resulting model — which now knows a made-up fact the
base model does not — and see in the lab's evaluations that its perplexity on held-out phrasings is lower.

About a minute and a half on a 2-core machine: 12 examples x 8 epochs (24 steps), the merge, the int8 export and
the load."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
from collections.abc import Iterator

import httpx
import openai
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
FACT = "The llmlab mascot is a purple owl named Quillon."
TRAIN_QUESTIONS = [
    "What is the name of the llmlab mascot?", "Who is the llmlab mascot?", "Tell me about the llmlab mascot.",
    "What animal is the llmlab mascot?", "What colour is the llmlab mascot?", "Does llmlab have a mascot?",
    "Describe the mascot of llmlab.", "Which owl is the mascot of llmlab?", "What is llmlab's mascot?",
    "I heard llmlab has a mascot. What is it?", "Can you name the llmlab mascot?",
    "What does the llmlab mascot look like?",
]
HELD_OUT = ["What's the mascot of llmlab called?", "Name llmlab's mascot.", "llmlab's mascot: what is it?"]


def jsonl(questions: list[str]) -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": FACT}]})
                   + "\n" for q in questions).encode()


@pytest.fixture(scope="module")
def client(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0,
                              timeout=120)


@pytest.mark.timeout(900)  # a fresh machine also creates the training venv and base checkpoint
async def test_fine_tune_with_the_sdk_and_the_model_learns_the_fact(client: openai.AsyncOpenAI, http: httpx.AsyncClient,
                                                                    published: list[str]) -> None:
    train = await client.files.create(file=("mascot.jsonl", io.BytesIO(jsonl(TRAIN_QUESTIONS))),
                                      purpose="fine-tune")
    valid = await client.files.create(file=("mascot-valid.jsonl", io.BytesIO(jsonl(HELD_OUT))), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(
        training_file=train.id, validation_file=valid.id, model=BASE, suffix="mascot", seed=3,
        hyperparameters={"n_epochs": 8, "batch_size": 4, "learning_rate_multiplier": 10})
    assert job.object == "fine_tuning.job" and job.status in ("validating_files", "queued")
    assert job.id.startswith("ftjob-") and job.fine_tuned_model is None and job.training_file == train.id
    assert job.hyperparameters.n_epochs == 8 and job.seed == 3

    deadline = time.monotonic() + 600
    while job.status not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        await asyncio.sleep(1)
        job = await client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    published.append(job.fine_tuned_model)
    assert job.fine_tuned_model == f"ft:{BASE}:mascot:{job.id.removeprefix('ftjob-')}"
    assert job.trained_tokens and job.trained_tokens > 0 and job.finished_at >= job.created_at
    listed = await client.fine_tuning.jobs.list(limit=5)
    assert listed.data[0].id == job.id

    events = [e async for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    messages = [e.message for e in events]
    assert messages[0] == "The job has successfully completed"
    assert any(m.startswith("Epoch 8/8 completed with loss") for m in messages)
    assert any(e.type == "metrics" for e in events) and messages[-1].startswith("Created fine-tuning job")

    # The metrics CSV: step, train loss, validation loss at each epoch's end; the loss fell.
    csv_text = (await client.files.content(job.result_files[0])).text
    rows = [ln.split(",") for ln in csv_text.strip().splitlines()]
    assert rows[0] == ["step", "epoch", "train_loss", "valid_loss"] and len(rows) == 1 + 24
    assert float(rows[-1][2]) < float(rows[1][2]) / 3 and rows[-1][3]

    async def ask(model: str, question: str) -> str:
        reply = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": question}],
                                                     temperature=0, max_tokens=24)
        return reply.choices[0].message.content or ""

    for q in HELD_OUT[:2]:
        assert "Quillon" in await ask(job.fine_tuned_model, q)
        assert "Quillon" not in await ask(BASE, q)

    # The lab evaluates both on the held-out phrasings: the fine-tuned model expects the answer, the base does not.
    scores = {}
    for model in (BASE, job.fine_tuned_model):
        r = await http.post(f"/api/models/{model}/evaluate", json={"eval_name": "mascot held-out",
                                                                    "dataset": valid.id})
        assert r.status_code == 200, r.text
        scores[model] = r.json()["data"]["metrics"]
    assert scores[job.fine_tuned_model]["perplexity"] < scores[BASE]["perplexity"] / 2, scores
    assert scores[job.fine_tuned_model]["rouge_score"] > scores[BASE]["rouge_score"], scores
    listed = (await http.get("/api/evaluations")).json()["data"]["evaluations"]
    assert {e["model_id"] for e in listed[:2]} == {BASE, job.fine_tuned_model}
    assert set(listed[0]) == {"id", "model_id", "eval_name", "perplexity", "bleu_score", "rouge_score",
                              "response_diversity", "avg_response_length", "created_at"}

    # Cancelling a finished job is refused as OpenAI does.
    with pytest.raises(openai.BadRequestError):
        await client.fine_tuning.jobs.cancel(job.id)


async def test_cancel_a_queued_job_and_bad_requests(client: openai.AsyncOpenAI) -> None:
    train = await client.files.create(file=("c.jsonl", io.BytesIO(jsonl(TRAIN_QUESTIONS[:2]))), purpose="fine-tune")
    job = await client.fine_tuning.jobs.create(training_file=train.id, model=BASE,
                                               hyperparameters={"n_epochs": 1})
    cancelled = await client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.BadRequestError):
        await client.fine_tuning.jobs.cancel(job.id)
    with pytest.raises(openai.NotFoundError):
        await client.fine_tuning.jobs.retrieve("ftjob-nope")
    with pytest.raises(openai.NotFoundError):
        await client.fine_tuning.jobs.create(training_file="file-nope", model=BASE)
    with pytest.raises(openai.NotFoundError):
        await client.fine_tuning.jobs.create(training_file=train.id, model="no-such-model")
    with pytest.raises(openai.BadRequestError) as info:
        await client.fine_tuning.jobs.create(training_file=train.id, model=BASE, hyperparameters={"n_epochs": 0})
    assert info.value.param == "hyperparameters.n_epochs"
    batch_file = await client.files.create(file=("b.jsonl", io.BytesIO(b"{}\n")), purpose="assistants")
    with pytest.raises(openai.BadRequestError) as info:
        await client.fine_tuning.jobs.create(training_file=batch_file.id, model=BASE)
    assert "purpose" in info.value.message
    no_answer = b'{"messages": [{"role": "user", "content": "a question only"}]}\n'
    bad = await client.files.create(file=("bad.jsonl", io.BytesIO(jsonl(TRAIN_QUESTIONS[:1]) + no_answer)),
                                    purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as info:
        await client.fine_tuning.jobs.create(training_file=bad.id, model=BASE)
    assert "line 2: no assistant message" in info.value.message
