"""Seed 004's model management through Envoy: `POST /api/v1/models/{name}/load` with its documented body
(`{"quantization": "q4_0", "prefer_gpu": false}`) serves the model in 4-bit, `GET /api/v1/models` shows what each
model really is, and bad input is a 400 in the native shape. The shared platform is put back to int8 afterwards."""

from __future__ import annotations

import uuid

import pytest

from services.inference.artifacts import find_variant

EMBEDDED = "smollm2-135m-instruct"
LOAD = f"/api/v1/models/{EMBEDDED}/load"


def listed(body: dict, name: str) -> dict:
    (model,) = [m for m in body["models"] if m["name"] == name]
    return model


@pytest.fixture(scope="module")
def int4_cached():
    """The int4 variant in the model cache before the load (built once there; tests/integration/test_quantization.py
    builds one on demand): a first build on a busy machine could outlast the load's wait and answer 503."""
    from services.inference.importer import import_model

    return import_model(EMBEDDED, quantization="int4", progress=lambda line: None)


@pytest.fixture
async def back_to_int8(http, int4_cached):
    yield
    r = await http.post(LOAD, json={"quantization": "int8"}, timeout=180)
    assert r.status_code == 200, r.text
    assert r.json()["model"]["quantization"] == "int8"


async def test_seed_004_load_example_serves_the_model_in_4_bit(http, back_to_int8):
    r = await http.post(LOAD, json={"quantization": "q4_0", "prefer_gpu": False}, timeout=180)
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "load_time", "warnings", "build_time"}
    variant = find_variant(EMBEDDED, "int4")
    assert variant is not None  # built on demand (or found) in the model cache
    assert body["model"] == {
        "name": EMBEDDED, "format": "onnx", "size": f"{variant.manifest.total_bytes / 1e9:.1f}GB", "loaded": True,
        "memory_usage": body["model"]["memory_usage"], "quantization": "int4", "device": "cpu",
    }  # fmt: skip
    assert body["warnings"] == [] and isinstance(body["load_time"], float) and body["load_time"] > 0

    gen = await http.post("/api/v1/generate", json={"prompt": "Name a colour.", "max_tokens": 8, "temperature": 0})
    assert gen.status_code == 200, gen.text
    assert gen.json()["usage"]["completion_tokens"] > 0

    models = await http.get("/api/v1/models")
    assert models.status_code == 200
    assert listed(models.json(), EMBEDDED) == body["model"]

    again = await http.post(LOAD, json={"quantization": "int4", "prefer_gpu": False})
    assert again.status_code == 200 and again.json()["load_time"] == 0 and again.json()["build_time"] == 0

    # /v1/models still lists the model with its serving fields.
    v1 = await http.get("/v1/models")
    assert v1.status_code == 200 and EMBEDDED in [m["id"] for m in v1.json()["data"]]


async def test_prefer_gpu_on_a_machine_without_one_loads_on_the_cpu_and_says_so(http):
    r = await http.post(LOAD, json={"quantization": "q8_0", "prefer_gpu": True}, timeout=180)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["device"] == "cpu" and body["model"]["quantization"] == "int8"
    assert len(body["warnings"]) == 1 and "CPU" in body["warnings"][0]


async def test_an_external_model_without_weights_is_listed_as_remote(http):
    identifier = f"claude-3-5-sonnet-{uuid.uuid4().hex[:8]}"
    created = await http.post("/models", json={"name": "Claude 3.5 Sonnet", "provider": "anthropic",
                                               "model_identifier": identifier, "version": "20241022"})
    assert created.status_code in (200, 201), created.text
    body = (await http.get("/api/v1/models")).json()
    assert listed(body, identifier) == {"name": identifier, "format": "remote", "size": None, "loaded": False,
                                        "memory_usage": "0.0GB", "quantization": None, "device": None}
    embedded = listed(body, EMBEDDED)
    assert embedded["format"] == "onnx" and embedded["size"].endswith("GB") and embedded["loaded"] is True


@pytest.mark.parametrize("body", [{"quantization": "q3_k"}, {"quantization": "fp16"}, {"quantization": "Q4_K_M"}])
async def test_an_unknown_quantization_is_a_400_in_the_native_shape(http, body):
    r = await http.post(LOAD, json=body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert set(err) == {"error", "request_id"} and err["request_id"] == r.headers["x-request-id"]
    assert err["error"]["code"] == "VALIDATION_ERROR", err
    assert "quantization" in str(err["error"]["details"]) and "q4_0" in str(err["error"]["details"]), err
    assert listed((await http.get("/api/v1/models")).json(), EMBEDDED)["loaded"] is True


async def test_loading_an_unknown_model_is_a_404(http):
    r = await http.post("/api/v1/models/no-such-model/load", json={"quantization": "q4_0"})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "MODEL_NOT_FOUND"
