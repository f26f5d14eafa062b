"""The lab's core loop through Envoy, as a newcomer with curl would use it (README "Try it", docs/metrics.md): create an
experiment, watch its responses stream in (SSE), read each one's six scores with factors, feedback and perplexity,
compare them with a p-value. Real services, the real embedded model, small counts and max_tokens."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as redis

from .test_bad_input import assert_lab_error

MODEL = "smollm2-135m-instruct"
DIMENSIONS = ("coherence", "completeness", "readability", "creativity", "specificity", "length_appropriateness")
METRIC_KEYS = {"overall_quality", *DIMENSIONS}
RESPONSE_KEYS = {"id", "experiment_id", "content", "parameters", "metrics", "performance", "created_at"}
SSE = {"accept": "text/event-stream"}
JSON = {"accept": "application/json"}
EXPERIMENT = {
    "name": "Lab loop", "type": "single", "model": MODEL,
    "prompt": "Write two sentences about a lighthouse keeper.",
    "parameters": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 24},
    "parameter_ranges": {"temperature_min": 0.3, "temperature_max": 0.9, "temperature_step": 0.3},
    "tags": ["loop", "e2e"],
}


async def sse_events(http, body: dict) -> list[dict]:
    """POST /api/responses/generate with Accept: text/event-stream; every `data:` frame parsed."""
    events = []
    async with http.stream("POST", "/api/responses/generate", json=body, headers=SSE, timeout=300) as r:
        assert r.status_code == 200, await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        buffer = ""
        async for chunk in r.aiter_text():
            buffer += chunk
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                assert frame.startswith("data: "), frame
                events.append(json.loads(frame[len("data: "):]))
    return events


@pytest.fixture(scope="module")
async def loop(http):
    """One experiment with its first run streamed (3 temperatures x 1) and a second one as JSON (2 responses)."""
    r = await http.post("/api/experiments", json=EXPERIMENT)
    assert r.status_code == 200, r.text
    exp = r.json()["data"]["experiment"]
    events = await sse_events(http, {"experiment_id": exp["id"], "generate_all": True, "count": 1})
    r = await http.post("/api/responses/generate", headers=JSON, timeout=300, json={
        "experiment_id": exp["id"], "specific_parameters": {"temperature": 0.5, "max_tokens": 16}, "count": 2})
    assert r.status_code == 200, r.text
    return exp, events, r.json()


async def test_generation_streams_the_documented_events(loop):
    exp, events, _ = loop
    assert events[0] == {"progress": 0, "status": "starting", "experiment_id": exp["id"], "results": []}
    generating = events[1:-1]
    assert [e["status"] for e in generating] == ["generating"] * 3
    assert [e["current_response"] for e in generating] == [1, 2, 3]
    assert [e["progress"] for e in generating] == [33, 66, 99] and {e["total"] for e in generating} == {3}
    for e in generating:  # each finished response arrives stored and scored
        assert set(e["response"]) == RESPONSE_KEYS and "error" not in e
    final = events[-1]
    assert final["status"] == "completed" and final["progress"] == 100
    assert len(final["results"]) == 3
    assert sorted(r["parameters"]["temperature"] for r in final["results"]) == [0.3, 0.6, 0.9]
    summary = final["summary"]
    assert summary["total_generated"] == 3 and summary["total_failed"] == 0
    assert summary["average_quality"] == round(sum(r["metrics"]["overall_quality"] for r in final["results"]) / 3, 1)
    assert summary["total_time"].endswith("s")


async def test_json_answer_is_the_final_response_envelope(loop):
    exp, _, body = loop
    assert body["success"] is True and body["meta"]["request_id"]
    data = body["data"]
    assert data["experiment_id"] == exp["id"] and len(data["results"]) == 2
    for result in data["results"]:
        assert set(result) == RESPONSE_KEYS
        assert result["parameters"]["temperature"] == 0.5 and result["parameters"]["max_tokens"] == 16
        assert METRIC_KEYS <= set(result["metrics"]) and result["metrics"]["perplexity"] > 1
        perf = result["performance"]
        assert perf["token_count"] >= 1 and perf["response_time"] > 0 and perf["cost"] >= 0
    assert set(data["summary"]) == {"total_generated", "average_quality", "total_cost", "total_time", "total_failed"}


async def test_a_response_has_six_dimensions_with_factors_feedback_and_perplexity(http, loop):
    _, _, body = loop
    rid = body["data"]["results"][0]["id"]
    r = await http.get(f"/api/metrics/{rid}")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["response_id"] == rid and data["calculated_at"].endswith("Z") and data["scorer_version"]
    assert METRIC_KEYS | {"perplexity", "mean_logprob"} == set(data["metrics"])
    assert data["metrics"]["perplexity"] == pytest.approx(2.718281828 ** -data["metrics"]["mean_logprob"], rel=1e-2)
    assert set(data["detailed_analysis"]) == set(DIMENSIONS)
    for name, d in data["detailed_analysis"].items():
        assert d["score"] == data["metrics"][name] and len(d["factors"]) == 3
        assert f"{d['score']:.1f}" in d["feedback"]
    assert set(data["detailed_analysis"]["coherence"]["factors"]) == {"logical_flow", "consistency", "transitions"}
    assert set(data["detailed_analysis"]["creativity"]["factors"]) == {
        "originality", "vocabulary_diversity", "narrative_innovation"}


async def test_reads_list_single_and_the_experiment(http, loop):
    exp, _, _ = loop
    r = await http.get(f"/api/responses/{exp['id']}", params={"sort_by": "quality", "limit": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    page = body["data"]["responses"]
    assert len(page) == 2 and body["meta"]["pagination"]["total"] == 5 and body["meta"]["pagination"]["has_next"]
    assert page[0]["metrics"]["overall_quality"] >= page[1]["metrics"]["overall_quality"]
    one = (await http.get(f"/api/responses/single/{page[0]['id']}")).json()["data"]["response"]
    assert one == page[0]
    got = (await http.get(f"/api/experiments/{exp['id']}")).json()["data"]["experiment"]
    assert got["status"] == "completed" and got["response_count"] == 5 and len(got["responses"]) == 5
    assert set(got["responses"][0]["quality_metrics"]) == set(DIMENSIONS)
    assert got["quality_score"] is not None and got["total_cost"] >= 0 and got["duration"].endswith("s")


async def test_stats(http, loop):
    exp, _, _ = loop
    r = await http.get(f"/api/experiments/{exp['id']}/stats")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["experiment_id"] == exp["id"]
    o = data["overview"]
    assert o["total_responses"] == 5 and o["success_rate"] == 100
    assert o["worst_quality"] <= o["average_quality"] <= o["best_quality"]
    assert set(data["quality_breakdown"]) == set(DIMENSIONS)
    perf = data["parameter_performance"]
    assert sum(p["response_count"] for p in perf) == 5
    assert {p["parameters"]["temperature"] for p in perf} == {0.3, 0.5, 0.6, 0.9}


async def test_compare_with_a_p_value_and_generated_recommendations(http, loop):
    _, events, _ = loop
    ids = [r["id"] for r in events[-1]["results"]]
    r = await http.post("/api/metrics/compare", json={"response_ids": ids})
    assert r.status_code == 200, r.text
    analysis = r.json()["data"]["comparison"]["comparative_analysis"]
    sig = analysis["statistical_significance"]
    assert sig["test"] in ("friedman", "none") and sig["samples"] == 6 and sig["note"]
    if sig["test"] == "friedman":
        assert 0 <= sig["p_value"] <= 1 and sig["quality_difference_significant"] == (sig["p_value"] < 0.05)
        assert f"{sig['p_value']:.4f}" in sig["note"]
    assert sorted(analysis["rankings"]["by_overall_quality"]) == sorted(ids)
    overall = analysis["metric_ranges"]["overall_quality"]
    assert overall["variance"] == round(overall["max"] - overall["min"], 1)

    r = await http.post("/api/responses/compare", json={"response_ids": ids})
    assert r.status_code == 200, r.text
    comp = r.json()["data"]["comparison"]
    assert [x["id"] for x in comp["responses"]] == ids
    assert comp["analysis"]["quality_differences"]["most_varied_metric"] in DIMENSIONS
    assert set(comp["analysis"]["parameter_impact"]) <= {"temperature"}
    best = max(comp["responses"], key=lambda x: (x["metrics"]["overall_quality"], -x["id"]))
    assert comp["analysis"]["recommendations"][0].startswith(f"Response {best['id']} scores highest overall "
                                                             f"({best['metrics']['overall_quality']:.1f}")

    r = await http.post("/api/responses/comparison/analyze", json={"response_ids": ids})
    assert r.status_code == 200, r.text
    a = r.json()["data"]["comparison_analysis"]
    assert a["quality_analysis"]["best_overall"] == best["id"]
    assert set(a["quality_analysis"]["metric_leaders"]) == set(DIMENSIONS)
    effect = a["parameter_impact"]["temperature_effect"]
    assert effect["high_temp_responses"] and effect["low_temp_responses"]
    content = a["content_analysis"]
    assert len(content["length_comparison"]) == len(content["vocabulary_diversity"]) == 3
    assert all(-1 <= s <= 1 for s in content["sentiment_analysis"]) and a["recommendations"]


async def test_comparison_listing_filters(http, loop):
    r = await http.get("/api/responses/comparison", params={"tags": "loop,e2e", "models": MODEL,
                                                            "quality_min": 0, "sort_by": "cost", "limit": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    items = body["data"]["responses"]
    assert len(items) == 3 and body["meta"]["pagination"]["total"] >= 5
    assert body["meta"]["filters_applied"] == {"quality_range": [0, 100], "models": [MODEL], "tags": ["loop", "e2e"]}
    assert items[0]["experiment_name"] == "Lab loop" and items[0]["tags"] == ["loop", "e2e"]
    assert items[0]["content_preview"] == items[0]["content"][:100] or items[0]["content_preview"].endswith("...")


async def test_batch_metrics_and_trends(http, loop):
    r = await http.post("/api/metrics/batch", json={"responses": [
        {"id": 1, "content": "Paris is the capital of France. It lies on the Seine.", "prompt": "Capital of France?"},
        {"content": "Dragons are big.", "prompt": "Write a 300-word story about a dragon"},
    ]})
    assert r.status_code == 200, r.text
    results = r.json()["data"]["results"]
    assert [x["index"] for x in results] == [0, 1] and results[0]["id"] == 1 and "id" not in results[1]
    assert (results[1]["detailed_analysis"]["length_appropriateness"]["score"]
            < results[0]["detailed_analysis"]["length_appropriateness"]["score"])
    r = await http.get("/api/metrics/trends", params={"period": "7d", "experiment_type": "single"})
    assert r.status_code == 200, r.text
    trends = r.json()["data"]["trends"]
    assert trends["period"] == "7d" and trends["data_points"][-1]["experiment_count"] >= 1
    assert trends["summary"]["note"] and trends["summary"]["best_day"] == trends["data_points"][-1]["date"]


async def test_events_announce_created_and_scored_responses(platform, loop, redis_url):
    _, _, body = loop
    rid = body["data"]["results"][0]["id"]
    client = redis.Redis.from_url(redis_url)
    try:
        entries = await client.xrange(f"{platform.schema_prefix}:stream:responses")
    finally:
        await client.aclose()
    seen = {(f[b"type"].decode(), json.loads(f[b"data"])["response_id"]) for _, f in entries}
    assert ("response.created", rid) in seen and ("response.scored", rid) in seen


async def test_a_client_that_goes_away_loses_no_work(http, db, loop):
    exp, _, _ = loop
    before = await db.fetchval("SELECT count(*) FROM responses WHERE experiment_id = $1", exp["id"])
    async with http.stream("POST", "/api/responses/generate", headers=SSE, timeout=60,
                           json={"experiment_id": exp["id"], "count": 2}) as r:
        async for chunk in r.aiter_text():
            assert '"starting"' in chunk
            break  # and hang up
    for _ in range(600):
        if await db.fetchval("SELECT count(*) FROM responses WHERE experiment_id = $1 AND quality_metrics IS NOT NULL",
                             exp["id"]) == before + 2:
            break
        await asyncio.sleep(0.2)
    else:
        pytest.fail("the abandoned run did not store its two responses")


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/api/responses/generate", {"experiment_id": 999999, "count": 1}, 404, "EXPERIMENT_NOT_FOUND"),
    ("/api/responses/generate", {"experiment_id": "EXP", "count": 101}, 400, "VALIDATION_ERROR"),
    ("/api/responses/generate", {"experiment_id": "EXP", "specific_parameters": {"temperature": 3}}, 400,
     "VALIDATION_ERROR"),
    ("/api/responses/generate", {"experiment_id": "EXP", "specific_parameters": {"max_tokens": 10**6}}, 400,
     "VALIDATION_ERROR"),
    ("/api/responses/generate", {"experiment_id": "EXP", "count": 100, "generate_all": True}, 400,
     "VALIDATION_ERROR"),
    ("/api/responses/compare", {"response_ids": [1]}, 400, "VALIDATION_ERROR"),
    ("/api/responses/compare", {"response_ids": [999998, 999999]}, 404, "RESPONSE_NOT_FOUND"),
    ("/api/responses/comparison/analyze", {"response_ids": [999998, 999999]}, 404, "RESPONSE_NOT_FOUND"),
    ("/api/metrics/compare", {"response_ids": [999998, 999999]}, 404, "RESPONSE_NOT_FOUND"),
    ("/api/metrics/batch", {"responses": [{"content": "  "}]}, 400, "VALIDATION_ERROR"),
])
async def test_bad_input_is_refused_in_the_lab_shape_and_stores_nothing(http, db, loop, path, body, status, code):
    exp, _, _ = loop
    body = {k: exp["id"] if v == "EXP" else v for k, v in body.items()}
    count = await db.fetchval("SELECT count(*) FROM responses")
    for accept in (SSE, JSON):
        r = await http.post(path, json=body, headers=accept)
        assert_lab_error(r, status, code)
    assert await db.fetchval("SELECT count(*) FROM responses") == count


async def test_unknown_ids_on_reads_are_404(http):
    assert_lab_error(await http.get("/api/responses/single/999999"), 404, "RESPONSE_NOT_FOUND")
    assert_lab_error(await http.get("/api/responses/999999"), 404, "EXPERIMENT_NOT_FOUND")
    assert_lab_error(await http.get("/api/metrics/999999"), 404, "RESPONSE_NOT_FOUND")
    assert_lab_error(await http.get("/api/experiments/999999/stats"), 404, "EXPERIMENT_NOT_FOUND")
