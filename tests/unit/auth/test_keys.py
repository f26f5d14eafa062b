"""A new API key's rules (services/auth/keys.py, docs/auth.md "API keys"): the body on its own, then the creator's
bounds. A key minted by a key never holds more than the minting key: permissions, limits, monthly quota, expiry."""

import datetime as dt
import time

import pytest

from llmlab.runtime import InvalidArgument, PermissionDenied
from services.auth.keys import Bounds, KeyRequest, grant, key_request
from services.auth.limits import TIERS

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
IN_10_DAYS = NOW + dt.timedelta(days=10)
ENTERPRISE, FREE = TIERS["enterprise"], TIERS["free"]


def body(**over) -> KeyRequest:
    args = {"name": "k", "permissions": [], "requests_per_minute": None, "tokens_per_minute": None,
            "expires_at": None, "now": NOW}
    args.update(over)
    return key_request(**args)


def user(*permissions: str) -> Bounds:
    return Bounds(frozenset(permissions), 0, 0, 0, None, by_key=False)


def key(*permissions: str, rpm=20, tpm=1000, tpmo=5000, expires_at=IN_10_DAYS) -> Bounds:
    return Bounds(frozenset(permissions), rpm, tpm, tpmo, expires_at, by_key=True)


def refused(call) -> dict:
    with pytest.raises(InvalidArgument) as err:
        call()
    d = err.value.details or {}
    # The OpenAI family's body shows only message and param: the message names both.
    assert err.value.message == f"`{d['field']}` {d['constraint']}"
    return d


@pytest.mark.parametrize("name", ["", "   ", "\u200b\u200b", "\ufeff\n"])
def test_name_is_required_and_visible(name):
    assert refused(lambda: body(name=name))["field"] == "name"


def test_name_is_trimmed_and_bounded():
    assert body(name="  My Application Key\u200b ").name == "My Application Key"
    assert body(name="x" * 255).name == "x" * 255
    d = refused(lambda: body(name="x" * 256))
    assert d["field"] == "name" and d["constraint"] == "must be at most 255 characters"


@pytest.mark.parametrize("text", ["tomorrow", "2030-13-01T00:00:00Z", "2030-12-31T23:59:59Z" + "0" * 60_000, "1" * 41])
def test_expires_at_must_be_a_timestamp_and_is_not_quoted_whole(text):
    started = time.perf_counter()
    d = refused(lambda: body(expires_at=text))
    assert time.perf_counter() - started < 0.05
    assert d["field"] == "expires_at" and d["constraint"].startswith("must be an RFC 3339 timestamp")
    assert len(d["value"]) < 100


def test_expires_at_in_the_past_and_valid_forms():
    assert refused(lambda: body(expires_at="2001-01-01T00:00:00Z"))["constraint"] == "must be in the future"
    assert body(expires_at="2030-12-31T23:59:59Z").expires_at == dt.datetime(2030, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
    assert body(expires_at="2030-12-31T23:59:59+02:00").expires_at.utcoffset() == dt.timedelta(hours=2)


def test_unknown_permissions_and_non_positive_limits():
    assert refused(lambda: body(permissions=["root"]))["field"] == "permissions"
    assert refused(lambda: body(requests_per_minute=0))["field"] == "rate_limit.requests_per_minute"
    assert refused(lambda: body(tokens_per_minute=-1))["field"] == "rate_limit.tokens_per_minute"


def test_a_user_keeps_today_s_rules_the_tier_caps_silently():
    g = grant(body(), user("admin"), ENTERPRISE)
    assert (g.permissions, g.requests_per_minute, g.tokens_per_minute, g.tokens_per_month) == (["admin"], 0, 0, 0)
    assert g.expires_at is None
    g = grant(body(requests_per_minute=1000, tokens_per_minute=5), user("inference"), FREE)
    assert (g.requests_per_minute, g.tokens_per_minute) == (20, 5)
    with pytest.raises(PermissionDenied) as err:
        grant(body(permissions=["keys"]), user("inference"), FREE)
    assert err.value.metadata == {"required_permission": "keys"}


def test_a_key_mints_at_most_its_own_permissions():
    manager = key("keys", "models.read")
    assert grant(body(), manager, ENTERPRISE).permissions == ["keys", "models.read"]
    assert grant(body(permissions=["models.read"]), manager, ENTERPRISE).permissions == ["models.read"]
    with pytest.raises(PermissionDenied) as err:
        grant(body(permissions=["inference"]), manager, ENTERPRISE)
    assert err.value.metadata == {"required_permission": "inference"}


def test_a_limited_key_cannot_mint_unlimited_or_higher_limits():
    manager = key("keys")
    # Nothing asked (what became 0/0, unlimited, under an unlimited tier): the minting key's own limits.
    g = grant(body(), manager, ENTERPRISE)
    assert (g.requests_per_minute, g.tokens_per_minute, g.tokens_per_month) == (20, 1000, 5000)
    g = grant(body(requests_per_minute=5, tokens_per_minute=1000), manager, ENTERPRISE)
    assert (g.requests_per_minute, g.tokens_per_minute) == (5, 1000)
    for field, over in [("rate_limit.requests_per_minute", {"requests_per_minute": 21}),
                        ("rate_limit.tokens_per_minute", {"tokens_per_minute": 1001})]:
        d = refused(lambda over=over: grant(body(**over), manager, ENTERPRISE))
        assert d["field"] == field and "the limit of the API key making this request" in d["constraint"]
    # The tier still caps below the key's figure.
    assert grant(body(), key("keys", rpm=100, tpm=0), FREE).requests_per_minute == 20
    # An unlimited key bounds nothing but the tier does.
    g = grant(body(requests_per_minute=7), key("keys", rpm=0, tpm=0, tpmo=0, expires_at=None), ENTERPRISE)
    assert (g.requests_per_minute, g.tokens_per_minute, g.tokens_per_month, g.expires_at) == (7, 0, 0, None)


def test_a_key_mints_keys_that_expire_no_later_than_itself():
    manager = key("keys")
    assert grant(body(), manager, ENTERPRISE).expires_at == IN_10_DAYS
    sooner = (NOW + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert grant(body(expires_at=sooner), manager, ENTERPRISE).expires_at == NOW + dt.timedelta(days=1)
    d = refused(lambda: grant(body(expires_at="2030-01-01T00:00:00Z"), manager, ENTERPRISE))
    assert d["field"] == "expires_at" and d["value"] == "2030-01-01T00:00:00Z"
    assert d["constraint"] == ("must not be later than 2026-01-11T00:00:00Z, "
                               "when the API key making this request expires")
