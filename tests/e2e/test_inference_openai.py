"""OpenAI-compatible generation through Envoy with the real clients: the `openai` SDK and LangChain's ChatOpenAI,
unmodified, against the embedded SmolLM2 model on our engine."""

import asyncio
import json
import math

import httpx
import openai
import pytest

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def client(platform) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


@pytest.fixture(scope="module")
def aclient(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


async def test_models_list_and_retrieve(aclient):
    models = await aclient.models.list()
    ids = [m.id for m in models.data]
    assert MODEL in ids
    model = await aclient.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model" and model.owned_by


async def test_chat_completion_answers_the_question(aclient):
    r = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        temperature=0, max_tokens=20,
    )
    choice = r.choices[0]
    assert "paris" in choice.message.content.lower()
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 20
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.id.startswith("chatcmpl-") and r.model == MODEL


async def test_streaming_equals_non_streaming(aclient):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Name three colors."}],
              "temperature": 0, "max_tokens": 24}
    whole = (await aclient.chat.completions.create(**kwargs)).choices[0].message.content
    parts, usage, reasons = [], None, []
    stream = await aclient.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            if c.finish_reason:
                reasons.append(c.finish_reason)
    assert "".join(parts) == whole
    assert reasons and usage is not None and usage.completion_tokens > 0


async def test_seed_n_and_stop(aclient):
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "Write a short poem about the sea."}],
              "temperature": 1.0, "max_tokens": 16, "seed": 1234}
    a = await aclient.chat.completions.create(**kwargs, n=2)
    b = await aclient.chat.completions.create(**kwargs, n=2)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1]
    stopped = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Count from 1 to 10 separated by commas."}],
        temperature=0, max_tokens=40, stop=["5"],
    )
    assert "5" not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"


async def test_logprobs(aclient):
    r = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=5, logprobs=True, top_logprobs=2,
        temperature=0,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in content)


async def test_completions_endpoint(aclient):
    r = await aclient.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text and r.usage.completion_tokens <= 8


def test_sync_sdk_and_langchain(client, platform):
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}],
                                       max_tokens=10)
    assert r.choices[0].message.content
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, temperature=0,
                     max_tokens=16, max_retries=0)
    reply = llm.invoke("What is the capital of France? Answer in one word.")
    assert reply.content and "paris" in reply.content.lower()
    chunks = list(llm.stream("Say hi"))
    assert "".join(c.content for c in chunks)


async def test_tools_are_parsed_or_fall_back(aclient):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    r = await aclient.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}], tools=tools,
        tool_choice="required", temperature=0, max_tokens=60,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather" and isinstance(json.loads(call.function.arguments), dict)


async def test_json_object_mode(aclient):
    r = await aclient.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Give a JSON object with a key 'city' for France's capital."}],
        response_format={"type": "json_object"}, temperature=0, max_tokens=40,
    )
    assert isinstance(json.loads(r.choices[0].message.content), dict)


@pytest.mark.parametrize(
    ("body", "status", "param", "code"),
    [
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, None, "model_not_found"),
        ({"model": MODEL, "messages": []}, 400, "messages", None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens",
         None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 3}, 400, "temperature", None),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x"}],
          "tools": [{"type": "function", "function": {"parameters": {}}}]}, 400, None, None),
    ],
)
async def test_bad_requests_in_openai_shape(http, body, status, param, code):
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert r.json()["request_id"] == r.headers["x-request-id"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


async def test_sdk_raises_typed_errors(aclient):
    with pytest.raises(openai.NotFoundError) as err:
        await aclient.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        await aclient.chat.completions.create(model=MODEL, messages=[])


async def test_cancelled_stream_frees_its_slot(platform, http, aclient):
    """A client that goes away mid-stream must not keep decoding: the engine's active count returns to zero."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a very long story."}], "max_tokens": 2000,
            "stream": True}
    async with httpx.AsyncClient(base_url=platform.gateway_url, timeout=30, headers=platform.auth_headers) as raw, \
            raw.stream("POST", "/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                break
    for _ in range(50):
        health = (await http.get("/health")).json()
        status = await _engine_active(platform)
        if status == 0:
            break
        await asyncio.sleep(0.2)
    assert status == 0 and health["model_loaded"] is True
    r = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ok?"}], max_tokens=4)
    assert r.choices[0].message.content is not None


async def _engine_active(platform) -> int:
    from llmlab.inference.v1 import inference_service_pb2 as pb
    from llmlab.inference.v1 import inference_service_pb2_grpc as pb_grpc

    async with platform.channel("inference") as channel:
        status = await pb_grpc.InferenceServiceStub(channel).GetEngineStatus(pb.GetEngineStatusRequest())
    return status.active_requests + status.queued_requests


async def test_completions_echo_logprobs_score_the_prompt(aclient):
    """echo + logprobs + max_tokens 0: the prompt's token logprobs in the legacy format, first token null."""
    prompt = "The capital of France is Paris."
    r = await aclient.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=3, max_tokens=0)
    choice = r.choices[0]
    lp = choice.logprobs
    assert choice.text == prompt and r.usage.completion_tokens == 0 and choice.finish_reason == "length"
    assert "".join(lp.tokens) == prompt and len(lp.tokens) == r.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x is not None and x <= 0 for x in lp.token_logprobs[1:])
    assert all(0 < len(alts) <= 4 and lp.tokens[i + 1] in alts for i, alts in enumerate(lp.top_logprobs[1:]))
    assert lp.text_offset[0] == 0 and lp.text_offset[-1] == len(prompt) - len(lp.tokens[-1])
    # With generation the prompt's entries come first, then the completion's, the same values for the prompt.
    more = await aclient.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=1, max_tokens=4,
                                            temperature=0)
    both = more.choices[0].logprobs
    assert both.tokens[: len(lp.tokens)] == lp.tokens and len(both.tokens) == len(lp.tokens) + 4
    assert both.token_logprobs[1 : len(lp.tokens)] == pytest.approx(lp.token_logprobs[1:], abs=1e-6)


async def test_score_rpc_gives_likelihood_and_perplexity(platform):
    from llmlab.inference.v1 import inference_service_pb2 as pb
    from llmlab.inference.v1 import inference_service_pb2_grpc as pb_grpc

    async with platform.channel("inference") as channel:
        stub = pb_grpc.InferenceServiceStub(channel)
        right = await stub.Score(pb.ScoreRequest(context="The capital of France is", continuation=" Paris"))
        wrong = await stub.Score(pb.ScoreRequest(context="The capital of France is", continuation=" Banana"))
        text = await stub.Score(pb.ScoreRequest(continuation="The quick brown fox jumps over the lazy dog.",
                                                top_logprobs=2))
        generated = await stub.Generate(pb.GenerateRequest(prompt="The capital of France is Paris.",
                                                           prompt_logprobs=True,
                                                           sampling=pb.SamplingParams(max_tokens=1)))
        ids = [t.token_id for t in generated.prompt_logprobs]
        rescored = await stub.Score(pb.ScoreRequest(context_token_ids=[1], continuation_token_ids=ids[:3]))
    assert right.model == MODEL and right.continuation_tokens == len(right.tokens) >= 1
    assert right.log_likelihood > wrong.log_likelihood and right.log_likelihood == pytest.approx(
        sum(t.logprob for t in right.tokens))
    assert text.context_tokens == 1 and text.continuation_tokens == len(text.tokens) > 5
    assert text.perplexity == pytest.approx(math.exp(-text.log_likelihood / text.continuation_tokens))
    assert all(len(t.top_logprobs) == 2 and t.token_id > 0 for t in text.tokens)
    # Generate's prompt_logprobs: every prompt token but the first, as the Score RPC values them.
    assert len(generated.prompt_logprobs) == generated.usage.prompt_tokens - 1
    assert "".join(t.token for t in generated.prompt_logprobs) == " capital of France is Paris."
    assert all(t.logprob <= 0 for t in generated.prompt_logprobs)
    assert [t.token_id for t in rescored.tokens] == ids[:3]


async def test_metrics_show_the_engine_and_its_prefix_cache(http, aclient):
    messages = [{"role": "system", "content": "You answer in one short sentence. " * 8},
                {"role": "user", "content": "Name a color."}]
    for _ in range(2):
        await aclient.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
    text = (await http.get("/metrics")).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("llmlab_engine_") and f'model="{MODEL}"' in line}
    for name in ("running_sequences", "queue_depth", "kv_blocks_used", "kv_blocks_free",
                 "prefix_cache_hit_rate", "prefix_cache_hit_tokens_total"):
        assert "llmlab_engine_" + name in values, name
    assert values["llmlab_engine_prefix_cache_hit_tokens_total"] >= 64 and values["llmlab_engine_kv_blocks_used"] > 0
