"""Test fakes for the /v1 protocol: scripted engine output as GenerationEvents, and an offline /v1 for the clients."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import openai

from services.inference.domain import GenerationEvent, TokenLogprob, TopLogprob, Usage
from services.inference.openai import (
    ChatCompletionRequest,
    ChatPlan,
    EngineLimits,
    ModelInfo,
    ProtocolError,
    build_chat_plan,
    build_completion_plan,
    chatml,
    list_models,
    parse_chat_request,
    parse_completion_request,
    parse_model_query,
)
from services.inference.openai.render import (
    ChatCompletionStream,
    ChoiceResult,
    CompletionStream,
    json_bytes,
    render_chat_completion,
    render_completion,
)

LIMITS = EngineLimits(context_length=8192, max_output_tokens=2048, vocab_size=49152)

USER = [{"role": "user", "content": "hi"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "messages": USER, **fields}


def completion(**fields: Any) -> dict[str, Any]:
    return {"model": "smollm2-135m-instruct", "prompt": "Once upon a time", **fields}


def pieces(text: str, size: int = 3) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def token_logprob(token: str, rank_tokens: int = 3) -> TokenLogprob:
    top = [TopLogprob(token=token, logprob=-0.25, bytes=list(token.encode()))]
    top += [TopLogprob(token=f"alt{k}", logprob=-1.5 - k, bytes=list(f"alt{k}".encode())) for k in range(rank_tokens)]
    return TokenLogprob(token=token, logprob=-0.25, bytes=list(token.encode()), top_logprobs=top)


def events(
    text: str,
    *,
    finish: str = "stop",
    prompt_tokens: int = 10,
    size: int = 3,
    logprobs: bool = False,
) -> Iterator[GenerationEvent]:
    """One event per `size` characters (one "token" each), the last with finish_reason and usage."""
    parts = pieces(text, size)
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        yield GenerationEvent(
            text=part,
            token_ids=[i],
            logprobs=[token_logprob(part)] if logprobs and part else [],
            finish_reason=finish if last else None,
            usage=Usage(prompt_tokens, len(parts)) if last else None,
            latency_ms=12.5 if last else None,
        )


def chat_plan(body: dict, limits: EngineLimits = LIMITS) -> tuple[ChatCompletionRequest, ChatPlan]:
    req = parse_chat_request(body)
    return req, build_chat_plan(req, chatml, limits)


Reply = Callable[[Any, int], str]


class FakeServer:
    """An offline /v1 for the real clients: bodies parsed by our protocol, scripted model text as engine events,
    responses rendered by our renderer. `reply(plan, choice_index)` is the text the "model" generates."""

    def __init__(self, reply: Reply | str = "Hello there! How can I help?", *, size: int = 3,
                 finish: str = "stop", limits: EngineLimits = LIMITS) -> None:
        self.reply: Reply = (lambda plan, i: reply) if isinstance(reply, str) else reply
        self.size = size
        self.finish = finish
        self.limits = limits
        self.bodies: list[dict[str, Any]] = []
        self.plans: list[Any] = []
        self.frames: list[bytes] = []
        self.models: list[ModelInfo] = []

    def transport(self) -> httpx2.MockTransport:
        return httpx2.MockTransport(self.handle)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(api_key="sk-test", base_url="http://llmlab.test/v1", max_retries=0,
                             http_client=httpx2.Client(transport=self.transport()))

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        try:
            path = request.url.path
            if path == "/v1/chat/completions":
                return self._chat(request.content)
            if path == "/v1/completions":
                return self._completion(request.content)
            if path == "/v1/models":
                q = dict(request.url.params)
                query = parse_model_query(q.get("category", ""), q.get("size", ""), q.get("provider", ""),
                                          int(q["page"]) if "page" in q else None,
                                          int(q["per_page"]) if "per_page" in q else None)
                return httpx2.Response(200, content=json_bytes(list_models(self.models, query)))
            return httpx2.Response(404, json={"error": {"message": "no route", "type": "invalid_request_error",
                                                        "param": None, "code": None}})
        except ProtocolError as err:
            return httpx2.Response(err.status, json=err.body())

    def _events(self, plan: Any, index: int, prompt_tokens: int) -> list[GenerationEvent]:
        text = self.reply(plan, index)
        prefix = getattr(plan, "assistant_prefix", "")
        if prefix and text.startswith(prefix):  # the prefill is in the prompt: the model writes the rest
            text = text[len(prefix):]
        return list(events(text, finish=self.finish, prompt_tokens=prompt_tokens, size=self.size,
                           logprobs=plan.base.logprobs))

    @staticmethod
    def _interleave(per_choice: list[list[GenerationEvent]]) -> Iterator[tuple[int, GenerationEvent]]:
        for step in range(max(len(e) for e in per_choice)):
            for index, evs in enumerate(per_choice):
                if step < len(evs):
                    yield index, evs[step]

    def _sse(self, frames: list[bytes]) -> httpx2.Response:
        self.frames = frames
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=iter(frames))

    def _chat(self, raw: bytes) -> httpx2.Response:
        self.bodies.append(json.loads(raw))
        req = parse_chat_request(raw)
        plan = build_chat_plan(req, chatml, self.limits)
        self.plans.append(plan)
        prompt_tokens = len(plan.prompt) // 4
        plan.sampling_params(prompt_tokens)
        per_choice = [self._events(plan, i, prompt_tokens) for i in range(plan.n)]
        if not req.stream:
            results = [ChoiceResult.collect(evs) for evs in per_choice]
            return httpx2.Response(200, content=json_bytes(render_chat_completion(plan, results, model=req.model)))
        stream = ChatCompletionStream(plan, model=req.model, system_fingerprint="fp_test")
        frames = stream.start()
        for index, event in self._interleave(per_choice):
            frames += stream.feed(index, event)
        return self._sse(frames + stream.close())

    def _completion(self, raw: bytes) -> httpx2.Response:
        self.bodies.append(json.loads(raw))
        req = parse_completion_request(raw)
        plan = build_completion_plan(req, self.limits)
        self.plans.append(plan)
        texts = [p.text if p.text is not None else " ".join(map(str, p.token_ids or [])) for p in plan.prompts]
        per_choice = []
        for index in range(plan.choice_count):
            prompt_tokens = max(1, len(texts[index // plan.n]) // 4)
            plan.sampling_params(prompt_tokens)
            per_choice.append(self._events(plan, index, prompt_tokens))
        if not req.stream:
            results = [ChoiceResult.collect(evs) for evs in per_choice]
            body = render_completion(plan, results, model=req.model, prompt_texts=texts)
            return httpx2.Response(200, content=json_bytes(body))
        stream = CompletionStream(plan, model=req.model, prompt_texts=texts)
        frames = stream.start()
        for index, event in self._interleave(per_choice):
            frames += stream.feed(index, event)
        return self._sse(frames + stream.close())


def sse_payloads(frames: list[bytes]) -> list[Any]:
    """The JSON of each `data:` frame ("[DONE]" kept as the string)."""
    out = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n\n") == 1
        data = frame[len(b"data: "):-2].decode()
        out.append(data if data == "[DONE]" else json.loads(data))
    return out
