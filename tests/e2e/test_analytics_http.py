"""Analytics through Envoy with traffic generated through the lab and the OpenAI family: the dashboard, the
correlation table, the optimisation frontier and the usage report agree with the stored data; a webhook receiver
gets a correctly signed delivery and its retry (docs/analytics.md)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json

import numpy as np
import openai
import pytest
import redis.asyncio as redis
from aiohttp import web
from scipy import stats as sps

from llmlab.runtime.streams import EventPublisher

from .conftest import login
from .test_auth import assert_serving_400
from .test_bad_input import assert_lab_error

MODEL = "smollm2-135m-instruct"
EXPERIMENT = {
    "name": "Analytics grid", "type": "single", "model": MODEL, "prompt": "Name a colour.",
    "parameters": {"temperature": 0.5, "top_p": 0.9, "max_tokens": 8},
    "parameter_ranges": {"temperature_min": 0.2, "temperature_max": 1.4, "temperature_step": 0.6},
}
SECRET = "whsec_" + base64.b64encode(b"e2e-analytics-webhook-secret-32b").decode()


async def eventually(check, within: float = 20.0):
    """Poll `check` (an async callable returning a value or None) until it returns a value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        got = await check()
        if got is not None:
            return got
        assert loop.time() < deadline, "analytics did not catch up in time"
        await asyncio.sleep(0.25)


@pytest.fixture(scope="module")
def aclient(platform) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.gateway_url}/v1", api_key=platform.api_key, max_retries=0)


@pytest.fixture(scope="module")
async def lab(http):
    """One experiment generated over a temperature grid (3 responses, 8 tokens each)."""
    r = await http.post("/api/experiments", json=EXPERIMENT)
    assert r.status_code == 200, r.text
    exp = r.json()["data"]["experiment"]
    r = await http.post("/api/responses/generate", timeout=300, headers={"accept": "application/json"},
                        json={"experiment_id": exp["id"], "generate_all": True, "count": 1})
    assert r.status_code == 200, r.text
    return exp


async def stored(db) -> list:
    return await db.fetch("SELECT parameters, overall_quality, cost, response_time_ms FROM responses "
                          "WHERE status = 'completed' AND model = $1", MODEL)


async def test_dashboard_agrees_with_the_stored_responses(lab, http, db):
    async def caught_up():
        rows = await stored(db)
        r = await http.get("/api/analytics/dashboard", params={"period": "7d", "models": MODEL})
        assert r.status_code == 200, r.text
        d = r.json()["data"]
        scored = [x["overall_quality"] for x in rows if x["overall_quality"] is not None]
        if d["overview"]["total_responses"] != len(rows) or not scored or \
                d["overview"]["average_quality"] != round(float(np.mean(scored)), 1):
            return None
        return d, rows

    d, rows = await eventually(caught_up)
    o = d["overview"]
    assert o["total_cost"] == pytest.approx(sum(x["cost"] for x in rows), abs=1e-5)
    assert o["experiments_today"] >= 1 and o["active_models"] == 1 and o["success_rate"] > 0
    assert [m["model"] for m in d["model_performance"]] == [MODEL]
    perf = d["model_performance"][0]
    assert perf["avg_response_time"] == pytest.approx(np.mean([x["response_time_ms"] for x in rows]) / 1000,
                                                      abs=1e-3)
    assert d["quality_trends"][-1]["top_model"] == MODEL
    assert any(a["experiment_id"] == lab["id"] and a["type"] == "experiment_completed"
               for a in d["recent_activity"])
    assert set(d["parameter_insights"]) == {"optimal_ranges", "correlations"}


async def test_correlations_equal_scipy_on_the_stored_responses(lab, http, db):
    rows = [x for x in await stored(db) if x["overall_quality"] is not None]
    temps = np.array([json.loads(x["parameters"])["temperature"] if isinstance(x["parameters"], str)
                      else x["parameters"]["temperature"] for x in rows])
    quality = np.array([x["overall_quality"] for x in rows])
    ref = sps.pearsonr(temps, quality)

    async def caught_up():
        r = await http.get("/api/analytics/correlations")
        assert r.status_code == 200, r.text
        data = r.json()["data"]
        row = next((c for c in data["correlations"]["parameter_quality"]
                    if (c["parameter"], c["quality_metric"]) == ("temperature", "overall_quality")), None)
        if row is None or row["correlation"] != pytest.approx(ref.statistic, abs=1e-3):
            return None
        return row, data

    row, data = await eventually(caught_up)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-2, abs=1e-6)
    assert row["significance"] in ("highly_significant", "significant", "not_significant")
    assert data["insights"] and all(isinstance(s, str) for s in data["insights"])


async def test_optimisation_has_a_frontier_of_tested_combinations(lab, http):
    r = await http.get("/api/analytics/optimization", params={"objective": "quality",
                                                              "constraints": json.dumps({"model": MODEL})})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert data["pareto_frontier"], data
    for p in data["pareto_frontier"]:
        assert set(p) == {"parameters", "quality", "cost", "speed"}
    for rec in data["recommendations"]:
        assert rec["objective"] == "maximize_quality" and 0 <= rec["confidence"] <= 1


async def test_usage_counts_a_request_and_a_streamed_one_with_their_real_tokens(http, aclient):
    async def total():
        r = await http.get("/v1/usage")
        assert r.status_code == 200, r.text
        return r.json()["total"]

    before = await total()
    plain = await aclient.chat.completions.create(model=MODEL, max_tokens=4,
                                                  messages=[{"role": "user", "content": "Say hi."}])
    stream = await aclient.chat.completions.create(model=MODEL, max_tokens=4, stream=True,
                                                   stream_options={"include_usage": True},
                                                   messages=[{"role": "user", "content": "Say yo."}])
    streamed = [c async for c in stream][-1].usage
    expected = before["tokens"] + plain.usage.total_tokens + streamed.total_tokens

    async def counted():
        t = await total()
        return t if t["requests"] >= before["requests"] + 2 else None

    after = await eventually(counted)
    assert after["requests"] == before["requests"] + 2 and after["tokens"] == expected
    r = await http.get("/v1/usage", params={"granularity": "hour", "model": MODEL})
    row = r.json()["data"][-1]
    assert row["model"] == MODEL and row["date"].endswith(":00:00Z") and row["cost"]["currency"] == "USD"
    assert 0 < row["latency"]["p50_ms"] <= row["latency"]["p95_ms"] <= row["latency"]["p99_ms"]

    bill = (await http.get("/v1/usage/billing")).json()
    period = bill["current_period"]
    month = (await http.get("/v1/usage", params={"start_date": period["start_date"],
                                                 "end_date": period["end_date"]})).json()["total"]
    assert period["usage"]["requests"] == month["requests"] and period["usage"]["tokens"] == month["tokens"]
    assert bill["payment_method"] is None and bill["next_billing_date"] > period["end_date"]


async def test_stats_endpoints(lab, http):
    r = await http.get(f"/api/models/{MODEL}/stats")
    assert r.status_code == 200, r.text
    s = r.json()["data"]
    assert s["model_id"] == MODEL and s["statistics"]["total_requests"] >= 3
    assert_lab_error(await http.get("/api/models/no-such-model/stats"), 404, "MODEL_NOT_FOUND")
    system = (await http.get("/api/system/stats")).json()["data"]
    assert system["usage"]["total_experiments"] >= 1 and system["performance"]["uptime"].endswith("%")
    stats = (await http.get("/api/statistics")).json()["data"]
    models = (await http.get("/api/models")).json()["data"]["models"]
    assert stats["total_models"] == len(models) and stats["total_generations"] >= 3


@pytest.mark.parametrize(("path", "params"), [
    ("/api/analytics/dashboard", {"period": "1y"}),
    ("/api/analytics/optimization", {"objective": "fastest"}),
    ("/api/analytics/optimization", {"constraints": "{bad"}),
])
async def test_lab_bad_input_is_400(http, path, params):
    assert_lab_error(await http.get(path, params=params), 400, "VALIDATION_ERROR")


async def test_an_unknown_model_constraint_is_404(http):
    r = await http.get("/api/analytics/optimization", params={"constraints": json.dumps({"model": "no-such"})})
    assert_lab_error(r, 404, "MODEL_NOT_FOUND")


@pytest.mark.parametrize(("params", "param"), [
    ({"granularity": "week"}, "granularity"),
    ({"start_date": "2024-02-02", "end_date": "2024-02-01"}, "end_date"),
])
async def test_usage_bad_input_is_400(http, params, param):
    assert_serving_400(await http.get("/v1/usage", params=params), param)


@pytest.mark.parametrize(("body", "param"), [
    ({"url": "ftp://example.com/h", "events": ["batch.completed"], "secret": SECRET}, "url"),
    ({"url": "http://127.0.0.1:9/h", "events": ["payment.failed"], "secret": SECRET}, "events"),
    ({"url": "http://127.0.0.1:9/h", "events": ["batch.completed"]}, "secret"),
])
async def test_webhook_bad_input_is_400(http, body, param):
    assert_serving_400(await http.post("/v1/webhooks", json=body), param)


async def test_a_webhook_receiver_gets_a_signed_delivery_and_its_retry(http, platform, redis_url):
    got: list[tuple[dict, bytes]] = []

    async def hook(request: web.Request) -> web.Response:
        got.append((dict(request.headers), await request.read()))
        return web.Response(status=503 if len(got) == 1 else 204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        r = await http.post("/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook",
                                                  "events": ["batch.completed"], "secret": SECRET})
        assert r.status_code == 200, r.text
        hook_obj = r.json()
        assert "secret" not in hook_obj and SECRET not in r.text and hook_obj["object"] == "webhook_endpoint"
        me = (await http.get(f"/v1/webhooks/{hook_obj['id']}")).json()
        assert me["id"] == hook_obj["id"] and "secret" not in me
        # The batch worker is another issue: its batch.completed event is published as it will publish it.
        token = (await login(platform))["access_token"]
        admin_id = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["sub"]
        client = redis.Redis.from_url(redis_url)
        await EventPublisher(client, platform.schema_prefix).publish("batches", "batch.completed", {
            "id": "batch_e2e", "object": "batch", "status": "completed", "principal": f"user:{admin_id}"})
        await client.aclose()

        async def two():
            return got if len(got) >= 2 else None

        await eventually(two)
        (h1, b1), (h2, b2) = got[:2]
        assert h1["webhook-id"] == h2["webhook-id"] and b1 == b2
        key = base64.b64decode(SECRET.removeprefix("whsec_"))
        for h, b in got[:2]:
            mac = hmac.new(key, f"{h['webhook-id']}.{h['webhook-timestamp']}.".encode() + b, hashlib.sha256)
            assert h["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
        assert json.loads(b2)["data"]["id"] == "batch_e2e"

        async def logged():
            log = (await http.get(f"/v1/webhooks/{hook_obj['id']}/deliveries")).json()["data"]
            return log if log and log[0]["status"] == "succeeded" else None

        (d,) = await eventually(logged)
        assert d["attempts"] == 2 and d["last_status_code"] == 204 and d["event_id"] == h1["webhook-id"]
        assert (await http.delete(f"/v1/webhooks/{hook_obj['id']}")).json()["deleted"] is True
    finally:
        await runner.cleanup()
