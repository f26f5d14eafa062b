"""Rate-limit tiers and the effective limits of a principal, as carried to the rate-limit check.

One tier holds two kinds of figures (docs/auth.md "Rate limits and quotas"): requests per hour with a burst (here:
requests in any one second), which every family's X-RateLimit-* headers report, and requests and tokens per minute,
which the serving family's -Requests/-Tokens headers report. Standard's per-minute figures lie between Free and Pro.
Pro's monthly token quota is the 50,000,000 the billing object's `tokens_per_month` limit shows; Free and Standard
scale down from it. 0 means unlimited everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Tier:
    """The limits every principal of a tier gets; a key's own rate_limit may only lower them."""

    name: str
    requests_per_hour: int
    burst: int
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int


TIERS: dict[str, Tier] = {
    "free": Tier("free", 100, 10, 20, 40_000, 1_000_000),
    "standard": Tier("standard", 1_000, 50, 500, 60_000, 10_000_000),
    "pro": Tier("pro", 10_000, 200, 3_500, 90_000, 50_000_000),
    "enterprise": Tier("enterprise", 0, 0, 0, 0, 0),
}
TIER_ALIASES = {"professional": "pro"}


def tier(name: str) -> Tier:
    return TIERS[TIER_ALIASES.get(name, name)]


def cap(requested: int | None, ceiling: int) -> int:
    """A key's limit: the requested value, never above the tier's (0 = unlimited on either side)."""
    if requested is None or requested <= 0:
        return ceiling
    return requested if ceiling == 0 else min(requested, ceiling)


@dataclass(frozen=True)
class Limits:
    """Everything the rate-limit check enforces for one principal (0 = no such limit).

    `key_*` are the API key's own limits (absent for JWT callers); `user_*` are the owning user's tier limits,
    shared by the user's tokens and all the user's keys.
    """

    key_requests_per_minute: int = 0
    key_tokens_per_minute: int = 0
    key_tokens_per_month: int = 0
    user_requests_per_hour: int = 0
    user_burst: int = 0
    user_requests_per_minute: int = 0
    user_tokens_per_minute: int = 0
    user_tokens_per_month: int = 0

    @classmethod
    def for_user(cls, t: Tier) -> Limits:
        return cls(
            user_requests_per_hour=t.requests_per_hour,
            user_burst=t.burst,
            user_requests_per_minute=t.requests_per_minute,
            user_tokens_per_minute=t.tokens_per_minute,
            user_tokens_per_month=t.tokens_per_month,
        )

    @classmethod
    def for_key(cls, t: Tier, requests_per_minute: int, tokens_per_minute: int, tokens_per_month: int) -> Limits:
        return cls(
            key_requests_per_minute=requests_per_minute,
            key_tokens_per_minute=tokens_per_minute,
            key_tokens_per_month=tokens_per_month,
            **{f.name: getattr(cls.for_user(t), f.name) for f in fields(cls) if f.name.startswith("user_")},
        )

    def header(self) -> str:
        """The x-llmlab-limits value, e.g. `key_requests_per_minute=20,user_burst=10`; "" when unlimited."""
        return ",".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name))

    @classmethod
    def parse(cls, text: str) -> Limits:
        known = {f.name for f in fields(cls)}
        values: dict[str, int] = {}
        for part in text.split(","):
            name, _, value = part.partition("=")
            if name in known and value.isdigit():
                values[name] = int(value)
        return cls(**values)
