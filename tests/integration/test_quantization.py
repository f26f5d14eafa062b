"""Quantization on load (`POST /api/v1/models/{name}/load`, NativeService over gRPC): the inference service in
process on port 0 against the real Postgres and Redis, over a throwaway model cache that links the imported int8
artifact and the fp32 variant of the real cache, so the int4 variant is really built here (the importer in a child
process, about ten seconds) and really served.

The fp32 variant is the one slow step (GGUF -> HF -> ONNX, ~40 s): the `fp32_variant` fixture builds it once into
the real model cache, where every later session finds it. Without the imported model the tests skip, unless
LLMLAB_REQUIRE_MODEL=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import json_format

from llmlab.inference.v1 import native_service_pb2 as pb
from llmlab.inference.v1 import native_service_pb2_grpc as pb_grpc
from llmlab.runtime import load_settings
from llmlab.runtime.server import ServiceApp
from services.inference.app import SPEC
from services.inference.artifacts import MANIFEST_NAME, default_cache_dir, find_cached, find_variant, read_manifest
from services.inference.settings import InferenceSettings
from tests.conftest import delete_keys, drop_schemas
from tests.integration.test_model_service import rpc_error

pytestmark = pytest.mark.integration

EMBEDDED = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def fp32_variant():
    """The fp32 variant in the real model cache (built there once; later sessions reuse it)."""
    if find_cached(EMBEDDED) is None:
        message = f"the embedded model {EMBEDDED} is not imported (python -m services.inference.importer)"
        if os.environ.get("LLMLAB_REQUIRE_MODEL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from services.inference.importer import import_model

    return import_model(EMBEDDED, quantization="fp32", progress=lambda line: None)


@pytest.fixture(scope="module")
def cache(fp32_variant, tmp_path_factory) -> pathlib.Path:
    """A model cache holding links to the imported artifact, the fp32 variant and the conversion venv; no int4."""
    real = default_cache_dir()
    root = tmp_path_factory.mktemp("model-cache")
    (root / EMBEDDED).symlink_to(real / EMBEDDED, target_is_directory=True)
    (root / f"{EMBEDDED}@fp32").symlink_to(fp32_variant.path, target_is_directory=True)
    if (real / ".venv-convert").exists():
        (root / ".venv-convert").symlink_to(real / ".venv-convert", target_is_directory=True)
    return root


@pytest.fixture(scope="module")
async def inference_app(cache, database_url, redis_url) -> AsyncIterator[ServiceApp]:
    run = uuid.uuid4().hex[:12]
    schema, prefix = f"t_{run}", f"t{run}"
    settings = load_settings(
        InferenceSettings, SPEC.name, environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=schema, redis_prefix=prefix, shutdown_grace_seconds=1.0, max_batch=4, model_cache=str(cache),
    )  # fmt: skip
    app = ServiceApp(SPEC, settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
        await drop_schemas(database_url, schema)
        await delete_keys(redis_url, prefix)


@pytest.fixture(scope="module")
async def native(inference_app) -> AsyncIterator[pb_grpc.NativeServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference_app.port}") as channel:
        yield pb_grpc.NativeServiceStub(channel)


def as_json(msg) -> dict:
    """As the gateway renders it (primitive fields always printed, proto field names)."""
    return json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


async def listed(native) -> dict:
    reply = await native.NativeListModels(pb.NativeListModelsRequest())
    (model,) = [m for m in as_json(reply)["models"] if m["name"] == EMBEDDED]
    return model


async def generate(native, prompt: str = "Say hello.") -> pb.NativeGenerateResponse:
    return await native.NativeGenerate(pb.NativeGenerateRequest(prompt=prompt, max_tokens=8, temperature=0.0))


async def test_q4_0_is_built_from_the_fp32_variant_and_served_while_serving_goes_on(native, cache):
    before = await listed(native)
    assert (before["quantization"], before["device"], before["loaded"]) == ("int8", "cpu", True)
    assert find_variant(EMBEDDED, "int4", cache) is None

    async def load_q4() -> pb.NativeLoadModelResponse:
        return await native.NativeLoadModel(
            pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="q4_0", prefer_gpu=False), timeout=180)

    load = asyncio.create_task(load_q4())
    await asyncio.sleep(1.0)
    served_during_build = await generate(native)  # the build is a child process: the int8 engine keeps serving
    assert served_during_build.usage.completion_tokens > 0
    assert not load.done(), "the int4 build took under a second: the test no longer shows serving during a build"
    reply = as_json(await load)

    model = reply["model"]
    assert model == {"name": EMBEDDED, "format": "onnx", "size": model["size"], "loaded": True,
                     "memory_usage": model["memory_usage"], "quantization": "int4", "device": "cpu"}
    assert reply["warnings"] == [] and 0 < reply["build_time"] <= reply["load_time"]
    variant = find_variant(EMBEDDED, "int4", cache)
    assert variant is not None and variant.path == cache / f"{EMBEDDED}@int4" and not variant.path.is_symlink()
    fp32 = read_manifest(cache / f"{EMBEDDED}@fp32")
    source = variant.manifest.source
    assert source["derived_from"] == "fp32"
    assert source["derived_from_model_sha256"] == next(f.sha256 for f in fp32.files if f.path == "model.onnx")
    assert source["gguf_sha256"] == fp32.source["gguf_sha256"]
    assert variant.manifest.total_bytes < find_cached(EMBEDDED, cache).manifest.total_bytes < fp32.total_bytes
    assert model["size"] == f"{variant.manifest.total_bytes / 1e9:.1f}GB"
    assert float(model["memory_usage"].removesuffix("GB")) > 0

    out = await generate(native)  # the int4 engine serves
    assert out.text.strip() and out.usage.completion_tokens > 0
    assert await listed(native) == model

    again = as_json(await native.NativeLoadModel(pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="int4")))
    assert (again["load_time"], again["build_time"], again["model"]["quantization"]) == (0, 0, "int4")


async def test_prefer_gpu_without_a_gpu_says_it_runs_on_the_cpu_and_requests_in_flight_finish(native):
    """Switching int4 -> int8 while a generation runs: the new engine takes the next requests, the old one ends the
    generation it holds (all its tokens, not "cancelled") before it stops."""
    long = asyncio.ensure_future(native.NativeGenerate(pb.NativeGenerateRequest(
        prompt="Count from 1 to 200, separated by commas.", max_tokens=600, temperature=0.0)))
    await asyncio.sleep(0.2)
    reply = as_json(await native.NativeLoadModel(
        pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="q8_0", prefer_gpu=True), timeout=120))
    assert not long.done(), "the generation ended before the swap: the test no longer shows a drained swap"
    assert reply["model"]["device"] == "cpu" and reply["model"]["quantization"] == "int8"
    assert len(reply["warnings"]) == 1 and "CPU" in reply["warnings"][0]
    assert (await generate(native)).usage.completion_tokens > 0  # served by the int8 engine meanwhile
    finished = await long
    assert (finished.finish_reason, finished.usage.completion_tokens) == ("length", 600)


@pytest.mark.parametrize("value", ["q3_k", "int2", "fp16", "Q4_K_M", "4bit"])
async def test_an_unknown_quantization_is_400_naming_the_field(native, value):
    code, reason, fields, _ = await rpc_error(
        native.NativeLoadModel(pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization=value)))
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_ERROR", ["quantization"])


async def test_a_failed_build_leaves_the_loaded_model_serving(native, cache):
    """The fp32 source of this cache is replaced by a damaged one (valid manifest, graph unreadable): the int4
    build fails in the importer, the load answers 500 VARIANT_BUILD_FAILED, and the int8 engine still serves."""
    await native.NativeLoadModel(pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="int8"), timeout=120)
    damaged = cache / f"{EMBEDDED}@fp32"
    manifest = json.loads((damaged / MANIFEST_NAME).read_text())
    damaged.unlink()
    damaged.mkdir()
    for f in manifest["files"]:
        path = damaged / f["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * f["size"]) if f["path"].endswith(".data") else path.write_bytes(b"x" * f["size"])
    (damaged / MANIFEST_NAME).write_text(json.dumps(manifest))
    variant = cache / f"{EMBEDDED}@int4"
    for p in sorted(variant.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    variant.rmdir()

    code, reason, _, details = await rpc_error(native.NativeLoadModel(
        pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="q4_0"), timeout=120))
    assert (code, reason) == (grpc.StatusCode.INTERNAL, "VARIANT_BUILD_FAILED")
    assert details["quantization"] == "int4" and details["exit_code"] == 1
    assert find_variant(EMBEDDED, "int4", cache) is None
    model = await listed(native)
    assert (model["loaded"], model["quantization"], model["device"]) == (True, "int8", "cpu")
    assert (await generate(native)).usage.completion_tokens > 0


@pytest.fixture
async def impatient_native(fp32_variant, tmp_path, database_url, redis_url) -> AsyncIterator[pb_grpc.NativeServiceStub]:
    """A second service whose loads wait only half a second for a build, over a cache of its own without int4."""
    real = default_cache_dir()
    (tmp_path / EMBEDDED).symlink_to(real / EMBEDDED, target_is_directory=True)
    (tmp_path / f"{EMBEDDED}@fp32").symlink_to(fp32_variant.path, target_is_directory=True)
    if (real / ".venv-convert").exists():
        (tmp_path / ".venv-convert").symlink_to(real / ".venv-convert", target_is_directory=True)
    run = uuid.uuid4().hex[:12]
    schema, prefix = f"t_{run}", f"t{run}"
    settings = load_settings(
        InferenceSettings, SPEC.name, environ={}, port=0, database_url=database_url, redis_url=redis_url,
        db_schema=schema, redis_prefix=prefix, shutdown_grace_seconds=1.0, max_batch=2, model_cache=str(tmp_path),
        variant_wait_s=0.5,
    )  # fmt: skip
    app = ServiceApp(SPEC, settings)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.NativeServiceStub(channel)
    finally:
        await app.stop()
        await drop_schemas(database_url, schema)
        await delete_keys(redis_url, prefix)


async def test_a_build_longer_than_the_wait_is_503_and_goes_on_to_be_served(impatient_native):
    request = pb.NativeLoadModelRequest(model_name=EMBEDDED, quantization="q4_0")
    code, reason, _, details = await rpc_error(impatient_native.NativeLoadModel(request, timeout=60))
    assert (code, reason) == (grpc.StatusCode.UNAVAILABLE, "VARIANT_BUILDING")
    assert details["quantization"] == "int4" and details["progress"] and details["elapsed_s"] >= 0.5
    assert (await generate(impatient_native)).usage.completion_tokens > 0  # int8 serves meanwhile
    for _ in range(120):  # the build goes on without the request that started it
        try:
            reply = as_json(await impatient_native.NativeLoadModel(request, timeout=60))
            break
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
            await asyncio.sleep(0.5)
    else:
        pytest.fail("the int4 build did not finish within a minute")
    assert (reply["model"]["quantization"], reply["model"]["loaded"]) == ("int4", True)
