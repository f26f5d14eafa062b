"""Tiers and limits, the principal headers, credentials and their constant-time checks, log redaction."""

import dataclasses
import time

import jwt
import pytest

from llmlab.runtime import SettingsError, load_settings
from llmlab.runtime.context import Principal
from llmlab.runtime.logs import _redact_secrets
from services.auth import credentials
from services.auth.credentials import AccessTokens, InvalidToken, Passwords, SecretDigest
from services.auth.limits import TIERS, Limits, cap, tier
from services.auth.settings import AuthSettings


def test_tiers_hold_hourly_and_per_minute_figures():
    assert (TIERS["free"].requests_per_hour, TIERS["free"].burst) == (100, 10)  # hourly with a burst
    assert (TIERS["standard"].requests_per_hour, TIERS["standard"].burst) == (1_000, 50)
    assert (TIERS["pro"].requests_per_hour, TIERS["pro"].burst) == (10_000, 200)
    assert (TIERS["free"].requests_per_minute, TIERS["free"].tokens_per_minute) == (20, 40_000)  # per minute
    assert (TIERS["pro"].requests_per_minute, TIERS["pro"].tokens_per_minute) == (3_500, 90_000)
    assert tier("professional") is TIERS["pro"]
    assert not any(dataclasses.astuple(TIERS["enterprise"])[1:])  # unlimited


def test_key_limits_are_capped_by_the_tier():
    assert cap(None, 20) == 20 and cap(1000, 20) == 20 and cap(5, 20) == 5
    assert cap(None, 0) == 0 and cap(7, 0) == 7  # unlimited tier: the key's own figure, or none


def test_limits_header_round_trip():
    limits = Limits.for_key(TIERS["free"], 10, 500, 0)
    assert Limits.parse(limits.header()) == limits
    assert limits.key_requests_per_minute == 10 and limits.user_burst == 10 and limits.user_requests_per_hour == 100
    assert Limits.for_user(TIERS["enterprise"]).header() == ""
    assert Limits.parse("user_burst=3,bogus=1,key_tokens_per_minute=x") == Limits(user_burst=3)


def test_principal_header_round_trip():
    p = Principal("u-1", "key_abc", frozenset({"inference", "models.read"}))
    assert p.header() == "user:u-1/key:key_abc"
    assert Principal.parse(p.header(), p.permissions_header()) == p
    assert Principal.parse("user:u-2") == Principal("u-2")
    assert Principal.parse("") is None and Principal.parse("anonymous") is None
    assert Principal.parse("user:") is None and Principal.parse("user:u/other:x") is None
    assert Principal("u", permissions=frozenset({"admin"})).allows("files")
    assert not p.allows("files") and p.allows("inference")


def test_api_key_and_digest():
    key = credentials.new_api_key()
    assert key.startswith("sk-") and len(key) == 46 and key != credentials.new_api_key()
    digest = SecretDigest("k" * 32)
    assert digest.digest(key) != SecretDigest("j" * 32).digest(key) and len(digest.digest(key)) == 64
    assert digest.matches(key, digest.digest(key)) and not digest.matches(key + "x", digest.digest(key))


def test_digest_comparison_is_constant_time(monkeypatch):
    calls = []
    real = credentials.hmac.compare_digest
    monkeypatch.setattr(credentials.hmac, "compare_digest", lambda a, b: calls.append((a, b)) or real(a, b))
    digest = SecretDigest("k" * 32)
    assert digest.matches("sk-x", digest.digest("sk-x"))
    assert calls


def test_access_tokens():
    tokens = AccessTokens("s" * 48, 3600)
    token = tokens.issue(user_id="u1", username="ada", permissions=["inference", "admin"], tier="pro", family="f1")
    claims = tokens.verify(token)
    assert (claims.user_id, claims.username, claims.tier, claims.family) == ("u1", "ada", "pro", "f1")
    assert claims.permissions == ("admin", "inference") and claims.expires_at - time.time() > 3590
    with pytest.raises(InvalidToken, match="ExpiredSignatureError"):
        tokens.verify(tokens.issue(user_id="u", username="a", permissions=[], tier="free", family="f",
                                   now=time.time() - 3601))
    with pytest.raises(InvalidToken):
        AccessTokens("t" * 48, 3600).verify(token)  # another key
    with pytest.raises(InvalidToken):
        tokens.verify(jwt.encode({"sub": "u", "fam": "f", "typ": "refresh", "iat": 1, "exp": 2**40, "iss": "llmlab",
                                  "perms": []}, "s" * 48, algorithm="HS256"))
    with pytest.raises(InvalidToken):  # alg=none is never accepted
        tokens.verify(jwt.encode({"sub": "u"}, None, algorithm="none"))


async def test_passwords_are_argon2id():
    passwords = Passwords()
    stored = await passwords.hash("correct horse battery")
    assert stored.startswith("$argon2id$") and "correct" not in stored
    assert await passwords.verify(stored, "correct horse battery")
    assert not await passwords.verify(stored, "wrong")
    assert not await passwords.verify(None, "anything")  # unknown user: the decoy, never a match
    assert not await passwords.verify("not a hash", "x")


def test_settings_fail_fast_and_hide_secrets():
    with pytest.raises(SettingsError, match="ADMIN_PASSWORD"):
        load_settings(AuthSettings, "auth", environ={"LLMLAB_AUTH_ADMIN_PASSWORD": "short"})
    with pytest.raises(SettingsError, match="ADMIN_TIER"):
        load_settings(AuthSettings, "auth", environ={"LLMLAB_AUTH_ADMIN_TIER": "gold"})
    s = load_settings(AuthSettings, "auth", environ={"LLMLAB_AUTH_ADMIN_PASSWORD": "p" * 20,
                                                     "LLMLAB_AUTH_JWT_SECRET": "j" * 40})
    assert s.admin_password == "p" * 20 and "p" * 20 not in repr(s) and "j" * 40 not in repr(s)


def test_log_redaction_covers_auth_fields_and_values():
    key, token = credentials.new_api_key(), AccessTokens("s" * 48, 60).issue(
        user_id="u", username="a", permissions=[], tier="free", family="f")
    event = _redact_secrets(None, "info", {
        "event": f"refused {key}", "password": "hunter2", "access_token": token, "refresh_token": "r",
        "api_key": key, "authorization": f"Bearer {token}", "detail": f"header was Bearer {token}",
        "headers": {"x-api-key": key}, "key_id": "key_123",
    })
    text = repr(event)
    assert key not in text and token not in text and "hunter2" not in text
    assert event["key_id"] == "key_123"
