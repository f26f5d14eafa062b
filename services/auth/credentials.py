"""Credentials: argon2 passwords, HMAC digests of API keys and refresh tokens, HS256 access tokens."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from dataclasses import dataclass

import argon2
import jwt

API_KEY_PREFIX = "sk-"
ISSUER = "llmlab"
ALGORITHM = "HS256"


def new_api_key() -> str:
    """`sk-` and 256 random bits (43 url-safe characters)."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def new_refresh_token() -> str:
    return secrets.token_urlsafe(48)


def new_secret() -> str:
    """A random secret for jwt_secret / key_hash_secret when the settings give none."""
    return secrets.token_urlsafe(48)


class SecretDigest:
    """Keyed digests of high-entropy secrets (API keys, refresh tokens).

    A slow password hash buys nothing for 256-bit random secrets and would cost milliseconds on every request;
    HMAC-SHA256 with a server-side key means a leaked table alone does not let anyone test guesses.
    """

    def __init__(self, key: str) -> None:
        self._key = key.encode()

    def digest(self, secret: str) -> str:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()

    def matches(self, secret: str, digest: str) -> bool:
        return hmac.compare_digest(self.digest(secret), digest)


class Passwords:
    """argon2id (argon2-cffi's RFC 9106 low-memory profile) run off the event loop: a hash takes ~0.1 s."""

    def __init__(self) -> None:
        self._hasher = argon2.PasswordHasher()
        # Verified against when the username is unknown, so that the answer takes as long as for a real user.
        self._decoy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(stored or self._decoy, password) and stored is not None
            except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    def needs_rehash(self, stored: str) -> bool:
        return self._hasher.check_needs_rehash(stored)


class InvalidToken(Exception):
    """The access token is malformed, forged, expired or of the wrong type."""


@dataclass(frozen=True)
class AccessClaims:
    """What a verified access token says."""

    user_id: str
    username: str
    permissions: tuple[str, ...]
    tier: str
    family: str
    expires_at: int


class AccessTokens:
    """HS256 JWT access tokens. `fam` names the refresh-token family, so a family revoked after a reuse takes its
    access tokens with it (the check looks the family up in Redis)."""

    def __init__(self, secret: str, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl_seconds = ttl_seconds

    def issue(self, *, user_id: str, username: str, permissions: list[str], tier: str, family: str,
              now: float | None = None) -> str:
        iat = int(time.time() if now is None else now)
        claims = {
            "iss": ISSUER,
            "sub": user_id,
            "name": username,
            "perms": sorted(permissions),
            "tier": tier,
            "fam": family,
            "typ": "access",
            "jti": uuid.uuid4().hex,
            "iat": iat,
            "exp": iat + self.ttl_seconds,
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str) -> AccessClaims:
        try:
            c = jwt.decode(
                token, self._secret, algorithms=[ALGORITHM], issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "fam", "typ"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        if c.get("typ") != "access" or not isinstance(c.get("perms"), list):
            raise InvalidToken("not an access token")
        return AccessClaims(
            user_id=str(c["sub"]), username=str(c.get("name", "")), permissions=tuple(map(str, c["perms"])),
            tier=str(c.get("tier", "free")), family=str(c["fam"]), expires_at=int(c["exp"]),
        )
