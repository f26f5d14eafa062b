"""The Python SDK (sdks/python, `llm_research_lab`) against the gateway: the documented example as written, the async
client, both pagination styles, errors as exceptions with their body, 429 retries after Retry-After."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from llm_research_lab import (
    AsyncClient,
    Client,
    ConflictError,
    RateLimitError,
    UnprocessableEntityError,
    ValidationError,
)

from .test_research_http import ROWS, model_uuid, upload_dataset


@pytest.fixture(scope="module")
async def ids(http):
    r = await http.post("/prompts", json={"name": "sdk", "template": "Q: {{question}}\nA:"})
    return {"model": await model_uuid(http), "dataset": await upload_dataset(http, ROWS, "SDK sums"),
            "template": r.json()["id"]}


def seed_example(api_key: str, base_url: str, ids: dict) -> tuple[float, object]:
    """The documented Python example, with this platform's ids (and a template and small counts) in its config."""
    from llm_research_lab import Client

    # Initialize client
    client = Client(
        api_key=api_key,
        base_url=base_url,
    )

    # Create an experiment
    experiment = client.experiments.create(
        name=f"My Experiment {uuid.uuid4().hex[:8]}",
        description="Testing GPT-4 on math problems",
        config={
            "model_ids": [ids["model"]],
            "dataset_ids": [ids["dataset"]],
            "prompt_template_ids": [ids["template"]],
            "parameters": {"temperature": 0.7, "max_tokens": 8},
            "num_samples": 2,
        },
    )

    # Start the experiment
    experiment.start()

    # Create a run
    run = experiment.create_run(
        config_overrides={"parameters": {"temperature": 0.5}}
    )

    # Wait for completion
    run.wait_for_completion(timeout=3600)

    # Get metrics
    metrics = experiment.get_metrics()
    print(f"Accuracy: {metrics.accuracy}")
    return metrics.accuracy, run


async def test_the_documented_example_runs_unchanged(platform, ids, capsys):
    accuracy, run = await asyncio.to_thread(seed_example, platform.api_key, platform.gateway_url, ids)
    assert 0 <= accuracy <= 1 and run.status == "completed" and run.progress.completed == 2
    assert f"Accuracy: {accuracy}" in capsys.readouterr().out


async def test_async_client_pagination_and_errors(platform, ids):
    owner = str(uuid.uuid4())
    async with AsyncClient(api_key=platform.api_key, base_url=platform.gateway_url) as client:
        made = [await client.experiments.create(f"page {i}", owner_id=owner, tags=["sdk"]) for i in range(5)]
        by_offset = [e.id async for e in client.experiments.iter(page_size=2, owner_id=owner, tags=["sdk"])]
        by_cursor = [e.id async for e in client.experiments.iter_cursor(page_size=2, owner_id=owner)]
        assert by_offset == by_cursor == [e.id for e in reversed(made)]

        with pytest.raises(ConflictError) as exc:
            await client.experiments.create("page 0", owner_id=owner)
        assert exc.value.existing_id == made[0].id and exc.value.body["request_id"]
        with pytest.raises(ValidationError) as exc:
            await client.experiments.create("x", config={"parameters": {"temperature": 9}})
        assert exc.value.fields == {"config.parameters.temperature": "Temperature must be between 0 and 2"}
        with pytest.raises(UnprocessableEntityError) as exc:
            await made[0].start()
        assert exc.value.error == "unprocessable_entity" and "no models configured" in exc.value.message

        t = await client.prompts.create("sdk render", "Hi {{name}}")
        assert await client.prompts.render(t.id, {"name": "Ada"}) == "Hi Ada"
        d = await client.datasets.create(f"sdk {uuid.uuid4().hex[:6]}", format="jsonl")
        report = await client.datasets.upload(d.id, b'{"question": "q", "answer": "a"}\n')
        assert report["row_count"] == 1 and (await client.datasets.get(d.id)).row_count == 1


async def test_429_is_retried_after_retry_after_then_raised_with_its_body(http, platform):
    r = await http.post("/v1/auth/api-keys", json={"name": "sdk limited", "rate_limit": {"requests_per_minute": 1}})
    key = r.json()["api_key"]
    client = Client(api_key=key, base_url=platform.gateway_url, max_retries=2)
    waits: list[float] = []
    client._t.sleep = waits.append  # the client's clock: record each wait instead of sleeping a minute
    await asyncio.to_thread(client.models.list, limit=1)
    with pytest.raises(RateLimitError) as exc:
        await asyncio.to_thread(client.models.list, limit=1)
    body = exc.value.body
    assert body["error"] == "rate_limit_exceeded" and body["limit"] == 1 and body["remaining"] == 0
    assert body["retry_after"] > 0 and body["reset_at"].endswith("Z") and body["request_id"]
    assert len(waits) == 2 and all(0 < w <= 60 for w in waits)
    assert waits[-1] == pytest.approx(float(exc.value.headers["retry-after"]), abs=1)
    client.close()


def test_the_sdk_is_pip_installable(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    source = tmp_path / "src"  # a copy: building leaves build/ and egg-info beside the sources
    shutil.copytree(Path(__file__).resolve().parents[2] / "sdks" / "python", source)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(source)], check=True, timeout=120)
    assert (target / "llm_research_lab" / "client.py").exists() and (target / "llm_research_lab" / "py.typed").exists()
    assert httpx  # the one runtime dependency


async def test_typescript_sdk_with_nodes_test_runner(platform, ids):
    """sdks/typescript's tests (the documented TypeScript example among them) against this gateway."""
    import os
    import shutil
    from pathlib import Path

    node = shutil.which("node")
    assert node, "Node.js is needed for the TypeScript SDK's tests"
    root = Path(__file__).resolve().parents[2] / "sdks" / "typescript"
    env = {**os.environ, "LLMLAB_GATEWAY_URL": platform.gateway_url, "LLMLAB_API_KEY": platform.api_key,
           "LLMLAB_TEST_MODEL_ID": ids["model"], "LLMLAB_TEST_DATASET_ID": ids["dataset"],
           "LLMLAB_TEST_TEMPLATE_ID": ids["template"]}
    proc = await asyncio.create_subprocess_exec(node, "--test", "test/", cwd=root, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 600)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "# pass 6" in text and "# skipped 0" in text, text
