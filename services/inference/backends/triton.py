"""NVIDIA Triton as a backend: `tritonclient.grpc.aio` streaming (ModelStreamInfer) against a decoupled model.

The model speaks the vLLM-on-Triton interface: `text_input` (BYTES) plus optional `stream`,
`sampling_parameters` (a JSON string of vLLM SamplingParams names), `exclude_input_in_output` and the
`return_finish_reason` / `return_num_input_tokens` / `return_num_output_tokens` flags; it streams responses whose
`text_output` (BYTES) holds the new text, with `finish_reason`, `num_input_tokens` and `num_output_tokens` when
asked, and marks its last response final. deploy/triton/model_repository/ holds such a model for our artifact;
a vLLM backend model answers the same requests.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import aio as triton_aio
from tritonclient.utils import InferenceServerException

from llmlab.runtime import InvalidArgument

from ..artifacts import find_cached
from ..domain import GenerationEvent, SamplingParams, Usage
from ..engine.chat_template import CHATML_TEMPLATE, ChatTemplate, flatten_content
from ..models.registry import ModelRecord
from .base import (
    BackendError,
    BackendRequest,
    BackendStatus,
    BackendTimeout,
    BackendUnavailable,
    ModelLimits,
    ModelNotFound,
)

# The inputs and outputs the client relies on; tests check deploy/triton's config.pbtxt against these.
INPUTS: dict[str, str] = {
    "text_input": "BYTES",
    "stream": "BOOL",
    "sampling_parameters": "BYTES",
    "exclude_input_in_output": "BOOL",
    "return_finish_reason": "BOOL",
    "return_num_input_tokens": "BOOL",
    "return_num_output_tokens": "BOOL",
}
REQUIRED_INPUTS = ("text_input",)
OUTPUTS: dict[str, str] = {
    "text_output": "BYTES",
    "finish_reason": "BYTES",
    "num_input_tokens": "UINT32",
    "num_output_tokens": "UINT32",
}

class TritonFailed(BackendError):
    """Triton or its model failed the request with an error of its own."""

    grpc_code = grpc.StatusCode.INTERNAL
    default_reason = "BACKEND_ERROR"


def sampling_parameters(p: SamplingParams) -> dict[str, Any]:
    """SamplingParams in vLLM's names (what `sampling_parameters` carries); defaults left out."""
    out: dict[str, Any] = {"max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p}
    if p.top_k > 0:
        out["top_k"] = p.top_k
    if p.frequency_penalty:
        out["frequency_penalty"] = p.frequency_penalty
    if p.presence_penalty:
        out["presence_penalty"] = p.presence_penalty
    if p.repetition_penalty != 1.0:
        out["repetition_penalty"] = p.repetition_penalty
    if p.stop:
        out["stop"] = list(p.stop)
    if p.stop_token_ids:
        out["stop_token_ids"] = list(p.stop_token_ids)
    if p.ignore_eos:
        out["ignore_eos"] = True
    if p.seed is not None:
        out["seed"] = p.seed
    return out


class TritonBackend:
    """One registered model served by a Triton model.

    backend_config: `url` ("host:8001", Triton's gRPC port), `model_name`, optional `model_version`,
    `timeout_s` (whole-stream limit, default 300), and the chat template for `messages` requests: `chat_template`
    (Jinja text) or `chat_template_path`; else the template of the record's imported artifact when it is in the
    local model cache; else ChatML."""

    kind = "triton"
    native_chat = False  # Triton takes text: the servicer renders chat with this model's template

    def __init__(self, model: ModelRecord) -> None:
        cfg = model.backend_config
        self.model = model
        self.url = str(cfg["url"])
        self.model_name = str(cfg["model_name"])
        self.model_version = str(cfg.get("model_version", ""))
        self.timeout_s = float(cfg.get("timeout_s", 300))
        self._template_source = self._find_template(model)
        self._template: ChatTemplate | None = None
        self._client: triton_aio.InferenceServerClient | None = None

    @staticmethod
    def _find_template(model: ModelRecord) -> str:
        cfg = model.backend_config
        if isinstance(cfg.get("chat_template"), str):
            return cfg["chat_template"]
        path = cfg.get("chat_template_path")
        if path and pathlib.Path(path).is_file():
            return pathlib.Path(path).read_text()
        if model.artifact and isinstance(model.artifact.get("id"), str):  # the imported artifact Triton serves
            cached = find_cached(model.artifact["id"])
            if cached is not None:
                return cached.file(cached.manifest.chat_template_file).read_text()
        return CHATML_TEMPLATE

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat, through the engine's one template renderer."""
        if self._template is None:
            self._template = ChatTemplate(self._template_source)
        flat = [{**m, "content": flatten_content(m.get("content"))} for m in messages]
        return self._template.render(flat, add_generation_prompt=add_generation_prompt)

    def limits(self) -> ModelLimits:
        return ModelLimits(context_length=self.model.context_window)

    def tokenize(self, text: str) -> None:
        return None  # the Triton model counts the prompt and refuses what does not fit

    def detokenize(self, token_ids: list[int]) -> None:
        return None

    def _get_client(self) -> triton_aio.InferenceServerClient:
        if self._client is None:
            self._client = triton_aio.InferenceServerClient(self.url)
        return self._client

    def _inputs(self, text: str, p: SamplingParams) -> list[triton_aio.InferInput]:
        def tensor(name: str, value: Any) -> triton_aio.InferInput:
            dtype = INPUTS[name]
            arr = np.array([value], dtype=object if dtype == "BYTES" else np.bool_)
            t = triton_aio.InferInput(name, [1], dtype)
            t.set_data_from_numpy(arr)
            return t

        return [
            tensor("text_input", text.encode()),
            tensor("stream", True),
            tensor("sampling_parameters", json.dumps(sampling_parameters(p)).encode()),
            tensor("exclude_input_in_output", True),
            tensor("return_finish_reason", True),
            tensor("return_num_input_tokens", True),
            tensor("return_num_output_tokens", True),
        ]

    async def generate(self, request: BackendRequest) -> AsyncIterator[GenerationEvent]:
        if request.params.logprobs or request.params.top_logprobs:
            raise InvalidArgument(
                "logprobs are not available for models served through Triton",
                field_violations=[("logprobs", "unsupported by the triton backend")],
            )
        text = request.prompt if request.prompt is not None else self.render_chat(request.messages or [])
        inputs = self._inputs(text, request.params)

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield {
                "model_name": self.model_name,
                "model_version": self.model_version,
                "inputs": inputs,
                "request_id": request.request_id,
            }

        t0 = time.perf_counter()
        ttft: float | None = None
        emitted = False
        finish: str | None = None
        n_in = n_out = None
        final = False
        stream = self._get_client().stream_infer(requests(), stream_timeout=self.timeout_s)
        try:
            async for result, error in stream:
                if error is not None:
                    raise self._stream_error(error)
                delta = _text(result.as_numpy("text_output"))
                finish = _text(result.as_numpy("finish_reason")) or finish
                n_in = _int(result.as_numpy("num_input_tokens"), n_in)
                n_out = _int(result.as_numpy("num_output_tokens"), n_out, total=True)
                params = result.get_response().parameters
                final = "triton_final_response" in params and params["triton_final_response"].bool_param
                if delta:
                    if ttft is None:
                        ttft = (time.perf_counter() - t0) * 1000
                    emitted = True
                    yield GenerationEvent(text=delta)
                if final:
                    break
        except BackendError as e:
            if not emitted:
                raise
            yield self._error_event(e.message, t0, ttft)
            return
        except grpc.aio.AioRpcError as e:
            err = self._rpc_error(e)
            if not emitted:
                raise err from None
            yield self._error_event(err.message, t0, ttft)
            return
        finally:
            # A no-op on a finished call; otherwise (client went away, stream failed) it stops the generation.
            stream.cancel()
        if not final and not finish:
            msg = f"Triton at {self.url} closed the stream before model '{self.model_name}' finished"
            if not emitted:
                raise BackendUnavailable(msg)
            yield self._error_event(msg, t0, ttft)
            return
        usage = Usage(n_in, n_out) if n_in is not None and n_out is not None else None
        yield GenerationEvent(
            finish_reason=_finish_reason(finish),
            usage=usage,
            time_to_first_token_ms=ttft,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    def _stream_error(self, error: InferenceServerException) -> BackendError:
        msg = str(error.message() if hasattr(error, "message") else error)
        low = msg.lower()
        if "unknown model" in low or ("not found" in low and "model" in low):
            return ModelNotFound(
                f"Triton at {self.url} does not serve model '{self.model_name}'", metadata={"model": self.model.id}
            )
        if "not ready" in low or "unavailable" in low:
            return BackendUnavailable(f"Triton model '{self.model_name}' is not ready")
        return TritonFailed(f"Triton model '{self.model_name}' failed the request: {msg[:300]}")

    def _rpc_error(self, e: grpc.aio.AioRpcError) -> BackendError:
        code = e.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return BackendTimeout(f"Triton at {self.url} did not finish within {self.timeout_s:g} s")
        if code == grpc.StatusCode.NOT_FOUND:
            return ModelNotFound(
                f"Triton at {self.url} does not serve model '{self.model_name}'", metadata={"model": self.model.id}
            )
        if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
            return TritonFailed(f"Triton rejected the request: {(e.details() or '')[:300]}")
        return BackendUnavailable(f"Triton at {self.url} is unreachable ({code.name})")

    def _error_event(self, message: str, t0: float, ttft: float | None) -> GenerationEvent:
        return GenerationEvent(
            finish_reason="error",
            error=message,
            time_to_first_token_ms=ttft,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    async def status(self) -> BackendStatus:
        t0 = time.perf_counter()
        client = self._get_client()
        try:
            live = await asyncio.wait_for(client.is_server_live(), 5)
            ready = live and await asyncio.wait_for(client.is_model_ready(self.model_name, self.model_version), 5)
        except (InferenceServerException, grpc.aio.AioRpcError, TimeoutError) as e:
            return BackendStatus(
                self.kind, self.model.id, False, f"Triton at {self.url} unreachable: {type(e).__name__}"
            )
        ms = (time.perf_counter() - t0) * 1000
        if not live:
            return BackendStatus(self.kind, self.model.id, False, f"Triton at {self.url} is not live", ms)
        if not ready:
            return BackendStatus(self.kind, self.model.id, False, f"Triton model '{self.model_name}' is not ready", ms)
        return BackendStatus(self.kind, self.model.id, True, f"Triton at {self.url} serves '{self.model_name}'", ms)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def _text(arr: np.ndarray | None) -> str:
    if arr is None:
        return ""
    return "".join(x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x) for x in arr.reshape(-1))


def _int(arr: np.ndarray | None, previous: int | None, *, total: bool = False) -> int | None:
    """`num_output_tokens` per response is the tokens of that response (vLLM); sum them. `num_input_tokens`
    repeats the prompt length; keep it."""
    if arr is None or arr.size == 0:
        return previous
    value = int(arr.reshape(-1)[0])
    return (previous or 0) + value if total else value


def _finish_reason(value: str | None) -> str:
    if value in ("stop", "length", "cancelled", "error"):
        return value
    if value == "abort":
        return "cancelled"
    return "stop"
