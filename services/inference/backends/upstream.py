"""Any OpenAI-compatible server as a backend: streamed /chat/completions and /completions over httpx."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from ..domain import GenerationEvent, SamplingParams, TokenLogprob, TopLogprob, Usage
from ..models.registry import ModelRecord
from ..openai.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN
from .base import (
    BackendError,
    BackendRequest,
    BackendStatus,
    BackendTimeout,
    BackendUnavailable,
    ModelLimits,
    ModelNotFound,
    UpstreamAuthFailed,
    UpstreamRateLimited,
    UpstreamRejected,
)

_MAX_UPSTREAM_MESSAGE = 300


class UpstreamBackend:
    """One registered model served by an OpenAI-compatible upstream.

    backend_config: `base_url` (e.g. "https://api.openai.com/v1"), `api_key_env` (the NAME of the environment
    variable holding the key; absent for servers without auth), `model` (the upstream's model name; default the
    registry's model_identifier or slug), `timeout_s` (longest wait for the next bytes, default 120),
    `connect_timeout_s` (default 10)."""

    kind = "openai"
    native_chat = True  # the upstream applies its own template, tools and response_format

    def __init__(
        self,
        model: ModelRecord,
        *,
        environ: Mapping[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        cfg = model.backend_config
        self.model = model
        self.base_url = str(cfg["base_url"]).rstrip("/")
        self.upstream_model = model.upstream_model
        self._api_key_env: str | None = cfg.get("api_key_env") or None
        self._environ = environ if environ is not None else os.environ
        read_s = float(cfg.get("timeout_s", 120))
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(read_s, connect=float(cfg.get("connect_timeout_s", 10))),
            transport=transport,
        )
        self._host = urlsplit(self.base_url).netloc

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self._api_key_env:
            key = self._environ.get(self._api_key_env)
            if not key:
                raise UpstreamAuthFailed(
                    f"The API key for model '{self.model.id}' is not configured: environment variable "
                    f"{self._api_key_env} is unset"
                )
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def limits(self) -> ModelLimits:
        return ModelLimits(context_length=self.model.context_window)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        raise TypeError("an OpenAI-compatible upstream renders chat itself (native_chat)")

    def tokenize(self, text: str) -> None:
        return None  # the upstream counts the prompt and reports it in `usage`

    def detokenize(self, token_ids: list[int]) -> None:
        return None

    def request_body(self, request: BackendRequest) -> dict[str, Any]:
        """The OpenAI request for one streamed sequence; non-OpenAI knobs only when set (vLLM-style extras)."""
        p: SamplingParams = request.params
        body: dict[str, Any] = {
            "model": self.upstream_model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if request.is_chat:
            body["messages"] = request.messages
            if request.tools:
                body["tools"] = request.tools
            if request.tool_choice is not None:
                body["tool_choice"] = request.tool_choice
            if request.response_format is not None:
                body["response_format"] = request.response_format
        else:
            body["prompt"] = request.prompt
        if p.frequency_penalty:
            body["frequency_penalty"] = p.frequency_penalty
        if p.presence_penalty:
            body["presence_penalty"] = p.presence_penalty
        if p.stop:
            body["stop"] = list(p.stop)
        if p.seed is not None:
            body["seed"] = p.seed
        if p.logprobs or p.top_logprobs:
            if request.is_chat:
                body["logprobs"] = True
                if p.top_logprobs:
                    body["top_logprobs"] = p.top_logprobs
            else:
                body["logprobs"] = p.top_logprobs
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        if p.stop_token_ids:
            body["stop_token_ids"] = list(p.stop_token_ids)
        if p.ignore_eos:
            body["ignore_eos"] = True
        return body

    async def generate(self, request: BackendRequest) -> AsyncIterator[GenerationEvent]:
        path = "/chat/completions" if request.is_chat else "/completions"
        body = self.request_body(request)
        headers = self._headers()
        t0 = time.perf_counter()
        ttft: float | None = None
        emitted = False
        finish: str | None = None
        usage: Usage | None = None
        calls = ToolCallAccumulator()
        done = False
        try:
            async with self._client.stream("POST", path, json=body, headers=headers) as resp:
                if resp.status_code != 200:
                    await resp.aread()
                    raise self._http_error(resp.status_code, resp.content, resp.headers)
                async for data in _sse_data(resp):
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = _json(data)
                    if "error" in chunk:  # an error sent in-band after the 200 (vLLM, OpenAI)
                        raise self._inband_error(chunk["error"])
                    if isinstance(chunk.get("usage"), dict):
                        usage = _usage(chunk["usage"])
                    for choice in chunk.get("choices") or []:
                        if choice.get("index", 0) != 0:
                            continue
                        text = _choice_text(choice, request.is_chat)
                        calls.feed((choice.get("delta") or {}).get("tool_calls") if request.is_chat else None)
                        logprobs = choice_logprobs(choice.get("logprobs"), request.is_chat)
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                        if text or logprobs:
                            if ttft is None:
                                ttft = (time.perf_counter() - t0) * 1000
                            emitted = True
                            yield GenerationEvent(text=text, logprobs=logprobs)
        except BackendError as e:
            if not emitted:
                raise
            yield _error_event(e.message, t0, ttft)
            return
        except httpx.TimeoutException:
            err = BackendTimeout(f"The upstream at {self._host} did not answer in time for model '{self.model.id}'")
            if not emitted:
                raise err from None
            yield _error_event(err.message, t0, ttft)
            return
        except httpx.HTTPError as e:
            err = BackendUnavailable(
                f"The upstream at {self._host} is unreachable for model '{self.model.id}' ({type(e).__name__})"
            )
            if not emitted:
                raise err from None
            yield _error_event(err.message, t0, ttft)
            return
        if finish is None and not done:
            msg = f"The upstream at {self._host} closed the stream before it finished"
            if not emitted:
                raise BackendUnavailable(msg)
            yield _error_event(msg, t0, ttft)
            return
        if calls:
            emitted = True
            if ttft is None:
                ttft = (time.perf_counter() - t0) * 1000
            yield GenerationEvent(text=calls.as_text())
        yield GenerationEvent(
            finish_reason=finish or "stop",
            usage=usage,
            time_to_first_token_ms=ttft,
            latency_ms=(time.perf_counter() - t0) * 1000,
        )

    def _http_error(self, status: int, content: bytes, headers: Mapping[str, str]) -> BackendError:
        upstream_msg = _upstream_message(content)
        where = f"The upstream at {self._host}"
        if status in (401, 403):
            env = f" (key from {self._api_key_env})" if self._api_key_env else ""
            return UpstreamAuthFailed(f"{where} rejected the credentials for model '{self.model.id}'{env}")
        if status == 404:
            return ModelNotFound(
                f"{where} does not serve model '{self.upstream_model}'" + (f": {upstream_msg}" if upstream_msg else ""),
                metadata={"model": self.model.id},
            )
        if status == 429:
            retry = headers.get("retry-after")
            return UpstreamRateLimited(
                f"{where} is rate limiting requests for model '{self.model.id}'",
                metadata={"retry_after": retry} if retry else None,
            )
        if status in (400, 409, 413, 422):
            return UpstreamRejected(upstream_msg or f"{where} rejected the request (HTTP {status})")
        return BackendUnavailable(f"{where} failed with HTTP {status} for model '{self.model.id}'")

    def _inband_error(self, err: Any) -> BackendError:
        err = err if isinstance(err, dict) else {"message": str(err)}
        code = err.get("code")
        status = int(code) if isinstance(code, int) or (isinstance(code, str) and code.isdigit()) else 500
        return self._http_error(status, json.dumps({"error": err}).encode(), {})

    async def status(self) -> BackendStatus:
        t0 = time.perf_counter()
        try:
            resp = await self._client.get("/models", headers=self._headers())
        except UpstreamAuthFailed as e:
            return BackendStatus(self.kind, self.model.id, False, e.message)
        except httpx.HTTPError as e:
            return BackendStatus(self.kind, self.model.id, False, f"{self._host} unreachable ({type(e).__name__})")
        ms = (time.perf_counter() - t0) * 1000
        if resp.status_code != 200:
            detail = self._http_error(resp.status_code, resp.content, resp.headers).message
            return BackendStatus(self.kind, self.model.id, False, detail, ms)
        ids = {m.get("id") for m in (_json(resp.text).get("data") or []) if isinstance(m, dict)}
        if ids and self.upstream_model not in ids:
            return BackendStatus(
                self.kind, self.model.id, False, f"{self._host} does not list {self.upstream_model}", ms
            )
        return BackendStatus(self.kind, self.model.id, True, f"{self._host} serves {self.upstream_model}", ms)

    async def moderate(self, texts: list[str]) -> dict[str, Any]:
        """The upstream's own `POST /moderations` for `texts` (docs/batches.md "Moderations"): its response body,
        with our model id in place of the upstream's name."""
        headers = {**self._headers(), "Accept": "application/json"}
        try:
            resp = await self._client.post("/moderations", json={"model": self.upstream_model, "input": texts},
                                           headers=headers)
        except httpx.HTTPError as e:
            raise BackendUnavailable(f"The upstream at {self._host} is unreachable ({type(e).__name__})") from None
        if resp.status_code != 200:
            raise self._http_error(resp.status_code, resp.content, resp.headers)
        body = _json(resp.text)
        if not isinstance(body.get("results"), list):
            raise BackendUnavailable(f"The upstream at {self._host} answered moderations without results")
        return {**body, "model": self.model.id}

    async def close(self) -> None:
        await self._client.aclose()


async def _sse_data(resp: httpx.Response) -> AsyncIterator[str]:
    """The `data:` payloads of a server-sent event stream (multi-line data joined with newlines)."""
    lines: list[str] = []
    async for line in resp.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


class ToolCallAccumulator:
    """The upstream's streamed `delta.tool_calls` fragments, joined per call index.

    They reach the servicer as the `<tool_call>` block our plan's output processor parses (openai/tools.py), so
    local and upstream models have one path from generated output to the client's `tool_calls`."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, str]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def feed(self, fragments: Any) -> None:
        for frag in fragments or []:
            if not isinstance(frag, dict):
                continue
            call = self._calls.setdefault(int(frag.get("index", len(self._calls))), {"name": "", "arguments": ""})
            fn = frag.get("function") or {}
            call["name"] += str(fn.get("name") or "")
            call["arguments"] += str(fn.get("arguments") or "")

    def as_text(self) -> str:
        calls = []
        for _, call in sorted(self._calls.items()):
            try:
                arguments: Any = json.loads(call["arguments"] or "{}")
            except json.JSONDecodeError:
                arguments = call["arguments"]
            calls.append({"name": call["name"], "arguments": arguments})
        return f"{TOOL_CALL_OPEN}{json.dumps(calls)}{TOOL_CALL_CLOSE}"


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise BackendUnavailable("The upstream sent a malformed stream chunk") from None
    if not isinstance(value, dict):
        raise BackendUnavailable("The upstream sent a malformed stream chunk")
    return value


def _choice_text(choice: dict[str, Any], chat: bool) -> str:
    if chat:
        return (choice.get("delta") or {}).get("content") or ""
    return choice.get("text") or ""


def _token_bytes(token: str, given: Any) -> list[int]:
    return list(given) if isinstance(given, list) else list(token.encode())


def choice_logprobs(lp: Any, chat: bool) -> list[TokenLogprob]:
    if not isinstance(lp, dict):
        return []
    out: list[TokenLogprob] = []
    if chat:
        for item in lp.get("content") or []:
            top = [
                TopLogprob(t["token"], float(t["logprob"]), _token_bytes(t["token"], t.get("bytes")))
                for t in item.get("top_logprobs") or []
            ]
            out.append(
                TokenLogprob(item["token"], float(item["logprob"]), _token_bytes(item["token"], item.get("bytes")), top)
            )
        return out
    tokens = lp.get("tokens") or []
    values = lp.get("token_logprobs") or []
    tops = lp.get("top_logprobs") or [None] * len(tokens)
    for token, value, alts in zip(tokens, values, tops, strict=False):
        top = [TopLogprob(t, float(v), list(t.encode())) for t, v in (alts or {}).items()]
        out.append(TokenLogprob(token, float(value) if value is not None else 0.0, list(token.encode()), top))
    return out


def _usage(u: dict[str, Any]) -> Usage:
    return Usage(prompt_tokens=int(u.get("prompt_tokens") or 0), completion_tokens=int(u.get("completion_tokens") or 0))


def _upstream_message(content: bytes) -> str:
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    err = data.get("error") if isinstance(data, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err if isinstance(err, str) else None
    if not msg and isinstance(data, dict):
        msg = data.get("message") or data.get("detail")
    return str(msg)[:_MAX_UPSTREAM_MESSAGE] if msg else ""


def _error_event(message: str, t0: float, ttft: float | None) -> GenerationEvent:
    return GenerationEvent(
        finish_reason="error",
        error=message,
        time_to_first_token_ms=ttft,
        latency_ms=(time.perf_counter() - t0) * 1000,
    )
