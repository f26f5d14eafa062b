"""Settings of the auth service (`LLMLAB_AUTH_<NAME>`): the first admin, token lifetimes, secrets, login limits."""

from __future__ import annotations

import dataclasses

from llmlab.runtime import ServiceSettings, SettingsError

from .limits import TIERS

MIN_PASSWORD_LENGTH = 12


@dataclasses.dataclass(frozen=True)
class AuthSettings(ServiceSettings):
    """Secrets are kept out of repr() so that a logged settings object shows none of them."""

    # The first admin: created on a start that finds no user of that name; later starts never change it.
    # No default password: without LLMLAB_AUTH_ADMIN_PASSWORD no admin is created (the start-up log says so).
    admin_username: str = "admin"
    admin_password: str = dataclasses.field(default="", repr=False)
    admin_tier: str = "enterprise"
    # HS256 key of access tokens and the HMAC key of API-key / refresh-token digests. Empty: generated once and
    # kept in the service's schema, so that every replica shares them; set them to keep them out of the database.
    jwt_secret: str = dataclasses.field(default="", repr=False)
    key_hash_secret: str = dataclasses.field(default="", repr=False)
    access_token_ttl_seconds: int = 3600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    # Brute-force limits on POST /auth/token: attempts per username and per client address per window.
    login_attempts_per_user: int = 5
    login_attempts_per_ip: int = 50
    login_window_seconds: int = 900
    # How long a resolved API key stays in Redis; revocation overwrites the entry at once.
    key_cache_seconds: int = 300
    # How long a replica reuses a credential it verified (from memory, no Redis read of the key or session) before
    # verifying it again. Revocation takes effect at once regardless: every use compares the user's revocation
    # generation in Redis. Other edits of a key or user (limits, permissions) show within this time plus
    # key_cache_seconds. 0: verify on every request.
    local_cache_seconds: float = 5.0
    # The consumer group that turns usage.recorded events into token counters.
    usage_group: str = "auth-ratelimit"

    def __post_init__(self) -> None:
        problems = []
        if self.admin_password and len(self.admin_password) < MIN_PASSWORD_LENGTH:
            problems.append(f"LLMLAB_AUTH_ADMIN_PASSWORD must have at least {MIN_PASSWORD_LENGTH} characters")
        if self.admin_tier not in TIERS:
            problems.append(f"LLMLAB_AUTH_ADMIN_TIER={self.admin_tier!r} must be one of {', '.join(TIERS)}")
        for name in ("jwt_secret", "key_hash_secret"):
            if getattr(self, name) and len(getattr(self, name)) < 32:
                problems.append(f"LLMLAB_AUTH_{name.upper()} must have at least 32 characters")
        for name in ("access_token_ttl_seconds", "refresh_token_ttl_seconds", "login_attempts_per_user",
                     "login_attempts_per_ip", "login_window_seconds", "key_cache_seconds"):
            if getattr(self, name) <= 0:
                problems.append(f"LLMLAB_AUTH_{name.upper()} must be positive")
        if self.local_cache_seconds < 0:
            problems.append("LLMLAB_AUTH_LOCAL_CACHE_SECONDS must not be negative")
        if problems:
            raise SettingsError("invalid llmlab settings:\n  " + "\n  ".join(problems))
