"""The remote backends on the wire, against real servers started here on 127.0.0.1.

- upstream: a minimal HTTP/1.1 server (asyncio + h11) speaking OpenAI's streaming wire format.
- triton: a real gRPC server implementing KServe v2 `GRPCInferenceService` from tritonclient's own protos. It is a
  protocol stand-in for Triton, not Triton: it streams canned chunks, or runs deploy/triton's model.py (through a
  stand-in for Triton's Python-backend utils) on the real artifact when the model cache holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import h11
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

from llmlab.runtime import InvalidArgument
from services.inference.backends import (
    BackendRequest,
    BackendTimeout,
    BackendUnavailable,
    ModelNotFound,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
)
from services.inference.backends.triton import TritonBackend, TritonFailed
from services.inference.backends.upstream import UpstreamBackend
from services.inference.domain import GenerationEvent, SamplingParams
from services.inference.importer import DEFAULT_MODEL, find_cached
from services.inference.models.registry import ModelRecord
from tests.unit.inference_backends.triton_stub import FINAL, Request, load_model_module, model_config_json

pytestmark = pytest.mark.integration

API_KEY = "sk-test-not-a-real-key"


def record(backend: str, backend_config: dict[str, Any], model_id: str = "remote-model") -> ModelRecord:
    now = dt.datetime.now(dt.UTC)
    return ModelRecord(
        id=model_id, uuid="00000000-0000-0000-0000-000000000001", name=model_id, provider="openai", base_model="",
        status="available", description="", model_size="", size_class="small", parameter_count=None,
        capabilities=["chat"], languages=[], category="chat", owned_by="x", cost_per_token=0.0,
        input_cost_per_token=0.0, output_cost_per_token=0.0, max_tokens=256, context_window=8192,
        model_identifier=model_id, version="", config={}, parameters=None, format="remote", quantization=None,
        backend=backend, backend_config=backend_config, artifact=None, created_at=now, updated_at=now,
    )  # fmt: skip


async def collect(gen: AsyncIterator[GenerationEvent]) -> list[GenerationEvent]:
    return [e async for e in gen]


# ============================================================================ OpenAI-compatible stand-in server


class OpenAIStandIn:
    """Serves /v1/models, /v1/chat/completions and /v1/completions (stream: true) over real sockets.

    The requested model name picks the behaviour: "ok", "missing" (404), "bad" (400), "busy" (429), "boom"
    (500), "slow" (no answer for 5 s), "cut" (drops the connection mid-stream), "drip" (a chunk every 50 ms)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.disconnects = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> OpenAIStandIn:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = await self._read_request(conn, reader)
                if request is None:
                    return
                await self._respond(conn, writer, request, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            self.disconnects += 1
        except asyncio.CancelledError:  # server shutting down under a "slow" request
            pass
        finally:
            writer.close()

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader):
        request, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and request is None:
                    return None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return request, body
            elif isinstance(event, h11.ConnectionClosed):
                return None, b""

    async def _send(self, conn, writer, *events) -> None:
        for event in events:
            writer.write(conn.send(event))
        await writer.drain()

    async def _json(self, conn, writer, status: int, payload: dict[str, Any], headers=()) -> None:
        data = json.dumps(payload).encode()
        hdrs = [("content-type", "application/json"), ("content-length", str(len(data))), *headers]
        await self._send(conn, writer, h11.Response(status_code=status, headers=hdrs), h11.Data(data=data))
        await self._send(conn, writer, h11.EndOfMessage())

    async def _respond(self, conn, writer, request: h11.Request, raw: bytes) -> None:
        headers = {k.decode().lower(): v.decode() for k, v in request.headers}
        path = request.target.decode()
        body = json.loads(raw) if raw else {}
        self.requests.append({"path": path, "headers": headers, "body": body})
        if headers.get("authorization") != f"Bearer {API_KEY}":
            err = {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
            return await self._json(conn, writer, 401, {"error": err})
        if request.method == b"GET" and path == "/v1/models":
            return await self._json(conn, writer, 200, {"object": "list", "data": [{"id": "ok", "object": "model"}]})
        model = body.get("model")
        if model == "missing":
            err = {"message": f"The model `{model}` does not exist", "code": "model_not_found"}
            return await self._json(conn, writer, 404, {"error": err})
        if model == "bad":
            err = {"message": "max_tokens is too large", "type": "invalid_request_error", "param": "max_tokens"}
            return await self._json(conn, writer, 400, {"error": err})
        if model == "busy":
            return await self._json(conn, writer, 429, {"error": {"message": "slow down"}}, [("retry-after", "7")])
        if model == "boom":
            return await self._json(conn, writer, 500, {"error": {"message": "internal"}})
        if model == "slow":
            await asyncio.sleep(5)
        chat = path == "/v1/chat/completions"
        sse = [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
        await self._send(conn, writer, h11.Response(status_code=200, headers=sse))
        pieces = ["Hello", ",", " world", "!"]
        if chat:
            first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
            await self._event(conn, writer, first)
        for i, piece in enumerate(pieces):
            if model == "cut" and i == 2:
                writer.transport.abort()  # the upstream dies mid-stream
                raise ConnectionResetError
            if model == "drip":
                await asyncio.sleep(0.05)
            if model == "inband" and i == 1:
                err = {"message": "generation failed", "type": "internal_error", "code": 500}
                await self._event(conn, writer, {"error": err})
                break
            last = i == len(pieces) - 1
            choice: dict[str, Any] = {"index": 0, "finish_reason": "stop" if last else None}
            if chat:
                choice["delta"] = {"content": piece}
                if body.get("logprobs"):
                    alt = {"token": piece, "logprob": -0.25, "bytes": list(piece.encode())}
                    top = [alt][: body.get("top_logprobs", 0)]
                    choice["logprobs"] = {"content": [{**alt, "top_logprobs": top}]}
            else:
                choice["text"] = piece
                if body.get("logprobs") is not None:
                    choice["logprobs"] = {"tokens": [piece], "token_logprobs": [-0.5], "top_logprobs": [{piece: -0.5}]}
            await self._event(conn, writer, {"id": "c1", "object": "chunk", "model": model, "choices": [choice]})
        if body.get("stream_options", {}).get("include_usage"):
            usage = {"prompt_tokens": 11, "completion_tokens": len(pieces), "total_tokens": 11 + len(pieces)}
            await self._event(conn, writer, {"id": "c1", "choices": [], "usage": usage})
        await self._send(conn, writer, h11.Data(data=b"data: [DONE]\n\n"), h11.EndOfMessage())

    async def _event(self, conn, writer, payload: dict[str, Any]) -> None:
        await self._send(conn, writer, h11.Data(data=b"data: " + json.dumps(payload).encode() + b"\n\n"))


@pytest.fixture
async def openai_server() -> AsyncIterator[OpenAIStandIn]:
    async with OpenAIStandIn() as server:
        yield server


def upstream(server: OpenAIStandIn, model: str, **cfg: Any) -> UpstreamBackend:
    config = {"base_url": server.base_url, "api_key_env": "LLMLAB_TEST_UPSTREAM_KEY", "model": model, **cfg}
    return UpstreamBackend(record("openai", config), environ={"LLMLAB_TEST_UPSTREAM_KEY": API_KEY})


async def test_upstream_chat_streams_deltas_usage_and_finish(openai_server):
    backend = upstream(openai_server, "ok")
    try:
        msgs = [{"role": "user", "content": "hi"}]
        events = await collect(backend.generate(BackendRequest("r1", backend.model, SamplingParams(), messages=msgs)))
    finally:
        await backend.close()
    assert [e.text for e in events[:-1]] == ["Hello", ",", " world", "!"]
    last = events[-1]
    assert last.finish_reason == "stop" and last.text == ""
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (11, 4)
    assert last.time_to_first_token_ms is not None and last.latency_ms >= last.time_to_first_token_ms
    sent = openai_server.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["body"]["messages"] == msgs and sent["body"]["model"] == "ok"


async def test_upstream_completions_with_logprobs(openai_server):
    backend = upstream(openai_server, "ok")
    try:
        params = SamplingParams(logprobs=True, top_logprobs=1, max_tokens=4, seed=5)
        events = await collect(backend.generate(BackendRequest("r2", backend.model, params, prompt="Say hello")))
    finally:
        await backend.close()
    sent = openai_server.requests[-1]
    assert sent["path"] == "/v1/completions" and sent["body"]["prompt"] == "Say hello"
    assert sent["body"]["logprobs"] == 1 and sent["body"]["seed"] == 5
    assert "".join(e.text for e in events) == "Hello, world!"
    lps = [lp for e in events for lp in e.logprobs]
    assert [lp.token for lp in lps] == ["Hello", ",", " world", "!"] and all(lp.logprob == -0.5 for lp in lps)
    assert lps[0].top_logprobs[0].token == "Hello"


async def test_upstream_chat_logprobs(openai_server):
    backend = upstream(openai_server, "ok")
    try:
        params = SamplingParams(logprobs=True, top_logprobs=1)
        req = BackendRequest("r3", backend.model, params, messages=[{"role": "user", "content": "x"}])
        events = await collect(backend.generate(req))
    finally:
        await backend.close()
    lps = [lp for e in events for lp in e.logprobs]
    assert len(lps) == 4 and lps[2].bytes == list(b" world") and lps[2].top_logprobs[0].logprob == -0.25


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        ("missing", ModelNotFound, "does not serve model 'missing'"),
        ("bad", UpstreamRejected, "max_tokens is too large"),
        ("busy", UpstreamRateLimited, "rate limiting"),
        ("boom", BackendUnavailable, "HTTP 500"),
    ],
)
async def test_upstream_http_errors_map_to_clear_exceptions(openai_server, model, error, message):
    backend = upstream(openai_server, model)
    try:
        with pytest.raises(error, match=message) as info:
            await collect(backend.generate(BackendRequest("r", backend.model, prompt="x")))
    finally:
        await backend.close()
    if model == "missing":
        assert info.value.reason == "MODEL_NOT_FOUND"
    if model == "busy":
        assert info.value.metadata == {"retry_after": "7"}


async def test_upstream_auth_failures(openai_server):
    wrong = UpstreamBackend(
        record("openai", {"base_url": openai_server.base_url, "api_key_env": "K", "model": "ok"}), environ={"K": "nope"}
    )
    unset = UpstreamBackend(record("openai", {"base_url": openai_server.base_url, "api_key_env": "K"}), environ={})
    try:
        with pytest.raises(UpstreamAuthFailed, match="rejected the credentials") as info:
            await collect(wrong.generate(BackendRequest("r", wrong.model, prompt="x")))
        assert info.value.status_http == 502 and "nope" not in info.value.message
        with pytest.raises(UpstreamAuthFailed, match="environment variable K is unset"):
            await collect(unset.generate(BackendRequest("r", unset.model, prompt="x")))
        st = await wrong.status()
        assert not st.ready and "rejected" in st.detail
    finally:
        await wrong.close()
        await unset.close()


async def test_upstream_timeout_and_unreachable(openai_server):
    slow = upstream(openai_server, "slow", timeout_s=0.3)
    gone = UpstreamBackend(record("openai", {"base_url": "http://127.0.0.1:9/v1", "connect_timeout_s": 1}))
    try:
        with pytest.raises(BackendTimeout, match="did not answer in time"):
            await collect(slow.generate(BackendRequest("r", slow.model, prompt="x")))
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await collect(gone.generate(BackendRequest("r", gone.model, prompt="x")))
        st = await gone.status()
        assert not st.ready and "unreachable" in st.detail
    finally:
        await slow.close()
        await gone.close()


async def test_upstream_dying_mid_stream_ends_with_an_error_event(openai_server):
    backend = upstream(openai_server, "cut")
    try:
        events = await collect(backend.generate(BackendRequest("r", backend.model, prompt="x")))
    finally:
        await backend.close()
    assert "".join(e.text for e in events[:-1]) == "Hello,"
    assert events[-1].finish_reason == "error" and events[-1].error


async def test_upstream_error_sent_in_band_after_text(openai_server):
    backend = upstream(openai_server, "inband")
    try:
        events = await collect(backend.generate(BackendRequest("r", backend.model, prompt="x")))
    finally:
        await backend.close()
    assert [e.text for e in events[:-1]] == ["Hello"]
    assert events[-1].finish_reason == "error" and "HTTP 500" in events[-1].error


async def test_upstream_client_going_away_closes_the_connection(openai_server):
    backend = upstream(openai_server, "drip")
    try:
        gen = backend.generate(BackendRequest("r", backend.model, prompt="x"))
        first = await anext(gen)
        assert first.text == "Hello"
        await gen.aclose()
        for _ in range(40):  # the server notices on its next write
            if openai_server.disconnects:
                break
            await asyncio.sleep(0.05)
        assert openai_server.disconnects == 1
    finally:
        await backend.close()


async def test_upstream_status(openai_server):
    ok, other = upstream(openai_server, "ok"), upstream(openai_server, "unlisted")
    try:
        st = await ok.status()
        assert st.ready and st.backend == "openai" and st.latency_ms is not None
        assert not (await other.status()).ready
    finally:
        await ok.close()
        await other.close()


# ===================================================================================== Triton protocol stand-in


def _input_arrays(req: service_pb2.ModelInferRequest) -> dict[str, np.ndarray]:
    out = {}
    for i, tensor in enumerate(req.inputs):
        raw = req.raw_input_contents[i]
        if tensor.datatype == "BYTES":
            out[tensor.name] = deserialize_bytes_tensor(raw)
        else:
            out[tensor.name] = np.frombuffer(raw, dtype=np.bool_ if tensor.datatype == "BOOL" else np.int32)
    return out


def _response(model: str, request_id: str, outputs: dict[str, np.ndarray], final: bool):
    resp = service_pb2.ModelInferResponse(model_name=model, id=request_id)
    for name, arr in outputs.items():
        if arr.dtype == np.object_:
            datatype, raw = "BYTES", serialize_byte_tensor(arr).item()
        else:
            datatype, raw = "UINT32", arr.astype(np.uint32).tobytes()
        resp.outputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        resp.raw_output_contents.append(raw)
    resp.parameters["triton_final_response"].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=resp)


class TritonStandIn(service_pb2_grpc.GRPCInferenceServiceServicer):
    """KServe v2 over gRPC, as Triton serves it for one decoupled model. Not Triton."""

    def __init__(self, model_name: str, handler) -> None:
        self.model_name = model_name
        self.handler = handler  # async (inputs) -> AsyncIterator[(outputs, final)]
        self.requests: list[dict[str, np.ndarray]] = []
        self.cancelled = asyncio.Event()

    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == self.model_name)

    async def ModelMetadata(self, request, context):
        if request.name != self.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.name}' is not found")
        return service_pb2.ModelMetadataResponse(
            name=self.model_name,
            versions=["1"],
            platform="python",
            inputs=[service_pb2.ModelMetadataResponse.TensorMetadata(name="text_input", datatype="BYTES", shape=[1])],
            outputs=[
                service_pb2.ModelMetadataResponse.TensorMetadata(name="text_output", datatype="BYTES", shape=[-1])
            ],
        )

    async def ModelStreamInfer(self, request_iterator, context):
        try:
            async for req in request_iterator:
                if req.model_name != self.model_name:
                    msg = f"Request for unknown model: '{req.model_name}' is not found"
                    yield service_pb2.ModelStreamInferResponse(error_message=msg)
                    continue
                inputs = _input_arrays(req)
                self.requests.append(inputs)
                try:
                    async for outputs, final in self.handler(inputs):
                        yield _response(req.model_name, req.id, outputs, final)
                except ValueError as e:  # what a model reports as the request's error
                    yield service_pb2.ModelStreamInferResponse(error_message=str(e))
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


@contextlib.asynccontextmanager
async def triton_server(servicer: TritonStandIn) -> AsyncIterator[str]:
    server = grpc.aio.server()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=1)


def _b(text: str) -> np.ndarray:
    return np.array([text.encode()], dtype=np.object_)


async def canned(inputs: dict[str, np.ndarray]):
    """Streams a fixed reply, one chunk per response, with vLLM's optional outputs when asked."""
    params = json.loads(inputs["sampling_parameters"][0])
    if params.get("temperature", 1) < 0:
        raise ValueError("temperature must be non-negative")
    chunks = ["The", " capital", " is", " Paris."][: params.get("max_tokens", 16)]
    for i, chunk in enumerate(chunks):
        last = i == len(chunks) - 1
        outputs = {"text_output": _b(chunk), "num_output_tokens": np.array([1], dtype=np.uint32)}
        outputs["num_input_tokens"] = np.array([len(inputs["text_input"][0].split())], dtype=np.uint32)
        if last:
            outputs["finish_reason"] = _b("length" if len(chunks) < 4 else "stop")
        yield outputs, last
        await asyncio.sleep(0.02)


async def dripping(inputs):
    for i in range(100):
        yield {"text_output": _b(f"t{i} ")}, False
        await asyncio.sleep(0.05)


def triton(url: str, model_name: str = "smollm2-135m-instruct", **cfg: Any) -> TritonBackend:
    return TritonBackend(record("triton", {"url": url, "model_name": model_name, **cfg}))


async def test_triton_streams_chunks_usage_and_finish():
    servicer = TritonStandIn("smollm2-135m-instruct", canned)
    async with triton_server(servicer) as url:
        backend = triton(url)
        try:
            params = SamplingParams(temperature=0.3, top_k=20, stop=["\n"], seed=4)
            events = await collect(backend.generate(BackendRequest("req-7", backend.model, params, prompt="a b c")))
        finally:
            await backend.close()
    assert [e.text for e in events[:-1]] == ["The", " capital", " is", " Paris."]
    last = events[-1]
    assert last.finish_reason == "stop" and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (3, 4)
    assert last.time_to_first_token_ms is not None and last.latency_ms > 0
    sent = servicer.requests[0]
    assert sent["text_input"][0] == b"a b c"
    assert bool(sent["stream"][0]) and bool(sent["exclude_input_in_output"][0])
    assert json.loads(sent["sampling_parameters"][0]) == {
        "max_tokens": 16, "temperature": 0.3, "top_p": 1.0, "top_k": 20, "stop": ["\n"], "seed": 4,
    }  # fmt: skip


async def test_triton_chat_is_rendered_with_the_template():
    servicer = TritonStandIn("smollm2-135m-instruct", canned)
    async with triton_server(servicer) as url:
        backend = triton(url)
        try:
            msgs = [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            ]
            events = await collect(
                backend.generate(BackendRequest("r", backend.model, SamplingParams(max_tokens=2), messages=msgs))
            )
        finally:
            await backend.close()
    prompt = servicer.requests[0]["text_input"][0].decode()
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert events[-1].finish_reason == "length"


async def test_triton_errors():
    servicer = TritonStandIn("smollm2-135m-instruct", canned)
    async with triton_server(servicer) as url:
        unknown, known = triton(url, "nope"), triton(url)
        try:
            with pytest.raises(ModelNotFound, match="does not serve model 'nope'"):
                await collect(unknown.generate(BackendRequest("r", unknown.model, prompt="x")))
            with pytest.raises(TritonFailed, match="temperature must be non-negative"):
                await collect(
                    known.generate(BackendRequest("r", known.model, SamplingParams(temperature=-1), prompt="x"))
                )
            with pytest.raises(InvalidArgument, match="logprobs"):
                await collect(
                    known.generate(BackendRequest("r", known.model, SamplingParams(logprobs=True), prompt="x"))
                )
            assert (await known.status()).ready
            assert not (await unknown.status()).ready
        finally:
            await unknown.close()
            await known.close()
    gone = triton("127.0.0.1:9")
    try:
        with pytest.raises(BackendUnavailable, match="unreachable"):
            await collect(gone.generate(BackendRequest("r", gone.model, prompt="x")))
        assert not (await gone.status()).ready
    finally:
        await gone.close()


async def test_triton_stream_timeout_and_cancellation():
    servicer = TritonStandIn("smollm2-135m-instruct", dripping)
    async with triton_server(servicer) as url:
        slow = triton(url, timeout_s=0.3)
        try:
            events = await collect(slow.generate(BackendRequest("r", slow.model, prompt="x")))
            assert events[-1].finish_reason == "error" and "did not finish" in events[-1].error
            assert len(events) > 1  # text arrived before the deadline
        finally:
            await slow.close()
        servicer.cancelled.clear()
        backend = triton(url)
        try:
            gen = backend.generate(BackendRequest("r", backend.model, prompt="x"))
            assert (await anext(gen)).text == "t0 "
            await gen.aclose()  # the client goes away
            await asyncio.wait_for(servicer.cancelled.wait(), 5)
        finally:
            await backend.close()


# ---------------------------------------------------------------------- model.py on the real artifact, via gRPC


ARTIFACT = find_cached(DEFAULT_MODEL)
needs_artifact = pytest.mark.skipif(
    ARTIFACT is None, reason="no imported model in the cache (python -m services.inference.importer)"
)


@pytest.fixture(scope="module")
def triton_model():
    mod = load_model_module()
    model = mod.TritonPythonModel()
    model.initialize(
        {"model_config": model_config_json().replace("/artifacts/smollm2-135m-instruct", str(ARTIFACT.path))}
    )
    yield model
    model.finalize()


def model_py_handler(model):
    """Runs model.py's execute() the way Triton's Python backend does and relays its responses."""

    async def handle(inputs: dict[str, np.ndarray]):
        request = Request(inputs)
        model.execute([request])
        loop = asyncio.get_running_loop()
        try:
            while True:
                response, flags = await loop.run_in_executor(None, request.sender.sent.get)
                if response.error is not None:
                    raise ValueError(response.error.message())
                yield response.outputs(), bool(flags & FINAL)
                if flags & FINAL:
                    return
        finally:
            request.cancel_flag = True  # the stream is gone: what Triton reports through is_cancelled()

    return handle


@needs_artifact
async def test_triton_client_against_model_py_on_the_real_artifact(triton_model):
    servicer = TritonStandIn("smollm2-135m-instruct", model_py_handler(triton_model))
    async with triton_server(servicer) as url:
        backend = triton(url)
        try:
            msgs = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
            greedy = SamplingParams(temperature=0, max_tokens=24)
            events = await collect(backend.generate(BackendRequest("r1", backend.model, greedy, messages=msgs)))
            again = await collect(backend.generate(BackendRequest("r2", backend.model, greedy, messages=msgs)))
            seeded = SamplingParams(temperature=0.8, top_p=0.9, max_tokens=12, seed=11)
            s1 = await collect(backend.generate(BackendRequest("r3", backend.model, seeded, prompt="Once upon a time")))
            s2 = await collect(backend.generate(BackendRequest("r4", backend.model, seeded, prompt="Once upon a time")))
            short = SamplingParams(temperature=0, max_tokens=3)
            cut = await collect(backend.generate(BackendRequest("r5", backend.model, short, messages=msgs)))
        finally:
            await backend.close()
    text = "".join(e.text for e in events)
    assert "Paris" in text, text
    assert len(events) > 3  # streamed, not one blob
    assert text == "".join(e.text for e in again)
    assert events[-1].finish_reason == "stop" and events[-1].usage.completion_tokens < 24
    assert events[-1].usage.prompt_tokens > 10
    assert "".join(e.text for e in s1) == "".join(e.text for e in s2)
    assert cut[-1].finish_reason == "length" and cut[-1].usage.completion_tokens == 3


@needs_artifact
async def test_model_py_stops_decoding_when_the_client_goes_away(triton_model):
    servicer = TritonStandIn("smollm2-135m-instruct", model_py_handler(triton_model))
    async with triton_server(servicer) as url:
        backend = triton(url)
        try:
            endless = SamplingParams(temperature=0.7, max_tokens=4000, ignore_eos=True, seed=1)
            gen = backend.generate(BackendRequest("r", backend.model, endless, prompt="Count to a million:"))
            assert (await anext(gen)).text
            await gen.aclose()
            for _ in range(100):  # 4000 tokens would take about a minute; cancellation stops it at the next token
                if triton_model._inflight == 0:
                    break
                await asyncio.sleep(0.05)
            assert triton_model._inflight == 0
        finally:
            await backend.close()


@needs_artifact
def test_triton_chat_uses_the_artifact_template_when_the_record_has_one():
    rec = record("triton", {"url": "127.0.0.1:1", "model_name": "m"})
    rec.artifact = {"id": DEFAULT_MODEL}
    prompt = TritonBackend(rec).render_chat([{"role": "user", "content": "Hi"}])
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
