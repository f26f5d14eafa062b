"""`POST /v1/moderations` through Envoy with the unmodified `openai` SDK: OpenAI's shape with all eleven categories,
scores from the classifier, string and list input; bad input answers 400 with request_id."""

from __future__ import annotations

import openai
import pytest

from services.inference.moderation.classifier import CATEGORIES


@pytest.fixture(scope="module")
def sdk(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


async def test_moderation_with_the_sdk(sdk):
    r = await sdk.moderations.create(input="I want to hurt someone, I'll stab him tonight",
                                     model="text-moderation-latest")
    assert r.id.startswith("modr-") and r.model == "text-moderation-latest" and len(r.results) == 1
    result = r.results[0]
    scores = result.category_scores.model_dump(by_alias=True)
    flags = result.categories.model_dump(by_alias=True)
    assert set(CATEGORIES) <= set(scores) and set(CATEGORIES) <= set(flags)
    assert all(0.0 <= scores[c] <= 1.0 for c in CATEGORIES)
    assert result.flagged and flags["violence"] and scores["violence"] > 0.5

    many = await sdk.moderations.create(input=["Could you summarise this report?", "I'm going to kill myself"],
                                        model="omni-moderation-latest")
    benign, harm = many.results
    assert not benign.flagged and harm.flagged and harm.categories.self_harm_intent


async def test_moderation_bad_input(http):
    for body, param in [({"input": ""}, "input"), ({"input": []}, "input"), ({"model": "text-moderation-latest"},
                                                                               "input"),
                        ({"input": ["ok", ""]}, "input[1]"), ({"input": "x" * 40_000}, "input")]:
        r = await http.post("/v1/moderations", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param and r.json()["request_id"]
    r = await http.post("/v1/moderations", json={"input": "hi", "model": "no-such-model"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = await http.post("/v1/moderations", json={"input": "hi", "model": "smollm2-135m-instruct"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
