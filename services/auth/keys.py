"""Rules of a new API key: its body validated on its own, then bounded by what its creator holds (docs/auth.md)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from llmlab.runtime import InvalidArgument, PermissionDenied, validation_error
from llmlab.runtime.context import Principal
from llmlab.runtime.text import visible_text

from .limits import Tier, cap
from .routes import PERMISSIONS

FORBIDDEN = "You do not have permission to access this resource"  # `required_permission` names what is missing
MAX_KEY_NAME_CHARS = 255
# Longer than any RFC 3339 timestamp with fractional seconds and an offset: refused before it is parsed.
MAX_TIMESTAMP_CHARS = 40


def _invalid(field: str, value: object, constraint: str) -> InvalidArgument:
    """`validation_error` with a sentence for a message: this route answers in the OpenAI family's body,
    which shows only `message` and `param`, so the message carries the constraint."""
    return validation_error(field, value, constraint, message=f"`{field}` {constraint}")


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expiry(text: str | None, now: dt.datetime) -> dt.datetime | None:
    if not text:
        return None
    at = None
    if len(text) <= MAX_TIMESTAMP_CHARS:
        try:
            at = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            pass
    if at is None:
        raise _invalid("expires_at", text, "must be an RFC 3339 timestamp, e.g. 2030-12-31T23:59:59Z")
    if at.tzinfo is None:
        at = at.replace(tzinfo=dt.UTC)
    if at <= now:
        raise _invalid("expires_at", text, "must be in the future")
    return at


@dataclass(frozen=True)
class KeyRequest:
    """A validated create-key body, before the caller's own bounds are applied."""

    name: str
    permissions: list[str]
    requests_per_minute: int | None
    tokens_per_minute: int | None
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class Bounds:
    """What a new key may hold at most: the creator's permissions, limits (0 = none) and expiry (None = never)."""

    permissions: frozenset[str]
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int
    expires_at: dt.datetime | None
    by_key: bool  # the creator is an API key: its limits and expiry bound the new key (docs/auth.md)


@dataclass(frozen=True)
class KeyGrant:
    """What the new key gets."""

    name: str
    permissions: list[str]
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int  # 0: the owner's tier decides
    expires_at: dt.datetime | None


def key_request(
    *, name: str, permissions: list[str], requests_per_minute: int | None, tokens_per_minute: int | None,
    expires_at: str | None, now: dt.datetime,
) -> KeyRequest:
    """Validate the body on its own: name required, permissions known, limits positive, expiry a future time."""
    try:
        clean = visible_text("name", name, max_chars=MAX_KEY_NAME_CHARS)
    except InvalidArgument as exc:
        d = exc.details or {}
        raise _invalid("name", d.get("value"), d.get("constraint", "is invalid")) from None
    unknown = [p for p in permissions if p not in PERMISSIONS]
    if unknown:
        raise _invalid("permissions", unknown[0], f"must be one of {', '.join(PERMISSIONS)}")
    for field, value in (("rate_limit.requests_per_minute", requests_per_minute),
                         ("rate_limit.tokens_per_minute", tokens_per_minute)):
        if value is not None and value <= 0:
            raise _invalid(field, value, "must be a positive integer")
    return KeyRequest(clean, permissions, requests_per_minute, tokens_per_minute, parse_expiry(expires_at, now))


def _bounded(field: str, requested: int | None, tier_ceiling: int, own: int, by_key: bool) -> int:
    """A new key's limit. The tier caps any request silently (0 = unlimited). A key creating a key cannot give
    more than it has: asking above its own limit is refused, asking nothing inherits it."""
    if by_key and own and requested is not None and requested > own:
        raise _invalid(field, requested, f"must be at most {own}, the limit of the API key making this request")
    effective = cap(requested, tier_ceiling)
    if by_key and own:
        effective = own if effective == 0 else min(effective, own)
    return effective


def grant(req: KeyRequest, bounds: Bounds, t: Tier) -> KeyGrant:
    """The new key within the creator's bounds: permissions at most the creator's (403 naming the first one
    beyond them); for a key-created key, limits, monthly quota and expiry at most the creating key's."""
    caller = Principal("", permissions=bounds.permissions)
    for p in req.permissions:
        if not caller.allows(p):
            raise PermissionDenied(FORBIDDEN, metadata={"required_permission": p})
    expires_at = req.expires_at
    if bounds.by_key and bounds.expires_at is not None:
        if expires_at is None:
            expires_at = bounds.expires_at
        elif expires_at > bounds.expires_at:
            limit = _rfc3339(bounds.expires_at)
            raise _invalid("expires_at", _rfc3339(expires_at),
                                   f"must not be later than {limit}, when the API key making this request expires")
    return KeyGrant(
        name=req.name,
        permissions=sorted(set(req.permissions)) if req.permissions else sorted(bounds.permissions),
        requests_per_minute=_bounded("rate_limit.requests_per_minute", req.requests_per_minute,
                                     t.requests_per_minute, bounds.requests_per_minute, bounds.by_key),
        tokens_per_minute=_bounded("rate_limit.tokens_per_minute", req.tokens_per_minute,
                                   t.tokens_per_minute, bounds.tokens_per_minute, bounds.by_key),
        tokens_per_month=bounds.tokens_per_month if bounds.by_key else 0,
        expires_at=expires_at,
    )
