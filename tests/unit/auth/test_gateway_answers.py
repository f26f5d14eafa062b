"""What the gateway hears back: rate-limit headers, 429 bodies per cause, denial bodies for the Lua filter."""

import json

from services.auth.gateway import rate_limit_headers, refusal, status_json
from services.auth.ratelimit import Decision, Window, WindowState

NOW = 1_700_000_000_000


def state(scope, name, limit, used, reset_in_ms, tokens=False):
    return WindowState(Window(scope, name, limit, 0 if tokens else 60_000, f"k:{scope}:{name}"), used,
                       NOW + reset_in_ms)


def test_headers_name_the_tightest_window_and_seed_003_pairs_on_v1():
    burst = state("user", "burst", 10, 9, 1_000)
    rpm = state("key", "requests_per_minute", 20, 3, 40_000)
    tpm = state("key", "tokens_per_minute", 40_000, 1_500, 20_000, tokens=True)
    d = Decision(True, [rpm, burst, tpm], None, NOW)
    h = dict(rate_limit_headers(d, serving=True))
    assert (h["x-ratelimit-limit"], h["x-ratelimit-remaining"]) == ("10", "1")
    assert h["x-ratelimit-reset"] == str((NOW + 1_000) // 1000)
    assert (h["x-ratelimit-limit-requests"], h["x-ratelimit-remaining-requests"]) == ("20", "17")
    assert (h["x-ratelimit-limit-tokens"], h["x-ratelimit-remaining-tokens"]) == ("40000", "38500")
    assert "retry-after" not in h
    research = dict(rate_limit_headers(d, serving=False))
    assert "x-ratelimit-limit-requests" not in research and research["x-ratelimit-limit"] == "10"


def test_refusal_by_requests_tokens_and_quota():
    rpm = state("key", "requests_per_minute", 20, 20, 12_300)
    d = Decision(False, [rpm], rpm, NOW)
    assert dict(rate_limit_headers(d, serving=True))["retry-after"] == "13"
    err = refusal(d)
    assert err.status_http == 429 and err.reason == "RATE_LIMIT_EXCEEDED"
    assert err.metadata["type"] == "rate_limit_error" and err.metadata["retry_after"] == "13"
    assert err.metadata["limit"] == "20" and err.metadata["remaining"] == "0"
    assert err.message == "Rate limit exceeded: 20 requests per minute for this API key. Please retry after 13 seconds."
    month = state("user", "tokens_per_month", 1_000_000, 1_000_050, 86_400_000, tokens=True)
    quota = refusal(Decision(False, [month], month, NOW))
    assert quota.reason == "QUOTA_EXCEEDED" and quota.metadata["type"] == "quota_exceeded_error"
    assert "monthly quota of 1000000 tokens for this account" in quota.message


def test_status_json_is_what_the_lua_filter_parses():
    body = json.loads(status_json(refusal(Decision(False, [], state("key", "burst", 1, 1, 500), NOW))))
    assert body["code"] == 8 and body["message"].startswith("Rate limit exceeded")
    info = body["details"][0]
    assert info["@type"] == "type.googleapis.com/google.rpc.ErrorInfo" and info["reason"] == "RATE_LIMIT_EXCEEDED"
    assert info["metadata"]["retry_after"] == "1"
