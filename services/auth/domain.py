"""Auth domain: logins with rotating refresh tokens, API keys, resolving credentials per request, usage."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from dataclasses import dataclass

import asyncpg
import redis.asyncio as redis
import structlog

from llmlab.runtime import NotFound, PermissionDenied, ResourceExhausted, Unauthenticated
from llmlab.runtime.context import ADMIN, Principal
from llmlab.runtime.redis_client import key as redis_key

from . import credentials
from .credentials import AccessTokens, InvalidToken, Passwords, SecretDigest
from .keys import FORBIDDEN, Bounds, grant, key_request
from .limits import Limits, Tier, cap, tier
from .ratelimit import RateLimiter
from .repository import AuthRepository, KeyRow, UserRow
from .routes import PUBLIC_PATHS, Route, RouteTable
from .settings import AuthSettings

log = structlog.get_logger(__name__)

INVALID_TOKEN = "Invalid or expired authentication token"  # one wording for every rejected token
MISSING_TOKEN = "Missing authentication token: send Authorization: Bearer <token> or X-API-Key"
# After a revocation the cache entry says so for this long; any fill that raced with the revocation loses.
TOMBSTONE_SECONDS = 24 * 3600


class CredentialRejected(Unauthenticated):
    """401; `why` (missing, invalid, expired, revoked) labels metrics and logs, never the response."""

    def __init__(self, why: str, message: str = INVALID_TOKEN) -> None:
        super().__init__(message)
        self.why = why


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


@dataclass(frozen=True)
class Identity:
    """A verified credential: who, with which permissions and limits."""

    principal: Principal
    limits: Limits
    tier: str
    username: str
    expires_at: int | None  # epoch seconds; None: never


@dataclass(frozen=True)
class ApiKeyView:
    """A key as its owner sees it, limits effective (the tier fills what the key leaves unset)."""

    id: str
    name: str
    permissions: list[str]
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int
    created_at: dt.datetime
    expires_at: dt.datetime | None


@dataclass(frozen=True)
class Verdict:
    """ext_authz's answer for an allowed request: the identity (None on public routes) and the route."""

    identity: Identity | None
    route: Route | None


def bearer(authorization: str) -> str:
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _key_view(k: KeyRow) -> ApiKeyView:
    t = tier(k.owner_tier)
    return ApiKeyView(
        id=k.id, name=k.name, permissions=k.permissions,
        requests_per_minute=cap(k.requests_per_minute, t.requests_per_minute),
        tokens_per_minute=cap(k.tokens_per_minute, t.tokens_per_minute),
        tokens_per_month=cap(k.tokens_per_month, t.tokens_per_month),
        created_at=k.created_at, expires_at=k.expires_at,
    )


def _key_record(k: KeyRow) -> dict:
    """What the per-request check needs of a key, as cached in Redis."""
    view = _key_view(k)
    owner = Principal(k.user_id, permissions=frozenset(k.owner_permissions))
    return {
        "id": k.id,
        "user_id": k.user_id,
        "username": k.username,
        # A key never holds more than its owner holds now.
        "permissions": [p for p in k.permissions if owner.allows(p)],
        "tier": k.owner_tier,
        "rpm": view.requests_per_minute,
        "tpm": view.tokens_per_minute,
        "tpmo": view.tokens_per_month,
        "expires_at": int(k.expires_at.timestamp()) if k.expires_at else None,
        "revoked": k.revoked_at is not None or k.owner_disabled,
    }


class Auth:
    """Everything the auth service decides; the servicers only translate protos."""

    def __init__(
        self, repo: AuthRepository, client: redis.Redis, prefix: str, settings: AuthSettings, *,
        access: AccessTokens, digest: SecretDigest, passwords: Passwords, routes: RouteTable,
    ) -> None:
        self.repo = repo
        self.settings = settings
        self.access = access
        self.digest = digest
        self.passwords = passwords
        self.routes = routes
        self.limiter = RateLimiter(client, prefix)
        self._redis = client
        self._prefix = prefix

    # -- the first admin ----------------------------------------------------------------------------------
    async def ensure_admin(self) -> None:
        """Create the admin from the settings unless a user of that name exists (first start only)."""
        s = self.settings
        if await self.repo.user_by_name(s.admin_username) is not None:
            return
        if not s.admin_password:
            log.warning("no admin user: set LLMLAB_AUTH_ADMIN_PASSWORD (and LLMLAB_AUTH_ADMIN_USERNAME) "
                        "before the first start to create one", username=s.admin_username)
            return
        created = await self.repo.create_user(
            s.admin_username, await self.passwords.hash(s.admin_password), [ADMIN], s.admin_tier
        )
        if created is not None:
            log.info("admin user created", username=s.admin_username, tier=s.admin_tier)

    # -- login and refresh ----------------------------------------------------------------------------------
    async def login(self, username: str, password: str, address: str) -> TokenPair:
        s = self.settings
        who = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
        wait = await self.limiter.login_attempt(
            who, address or "unknown", window_s=s.login_window_seconds, per_user=s.login_attempts_per_user,
            per_address=s.login_attempts_per_ip,
        )
        if wait:
            reset_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=wait)
            raise ResourceExhausted(
                f"Too many login attempts. Please retry after {wait} seconds.",
                metadata={"retry_after": wait, "limit": s.login_attempts_per_user, "remaining": 0,
                          "reset_at": reset_at.strftime("%Y-%m-%dT%H:%M:%SZ")},
            )
        user = await self.repo.user_by_name(username.strip()) if username.strip() else None
        ok = await self.passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            log.info("login refused", reason="bad credentials" if not ok else "disabled")
            raise Unauthenticated("Invalid username or password")
        await self.limiter.login_succeeded(who, address or "unknown")
        if self.passwords.needs_rehash(user.password_hash):
            await self.repo.set_password_hash(user.id, await self.passwords.hash(password))
        return await self._issue(user, str(uuid.uuid4()))

    async def _issue(self, user: UserRow, family: str, conn: asyncpg.Connection | None = None) -> TokenPair:
        refresh = credentials.new_refresh_token()
        await self.repo.add_refresh_token(
            family_id=family, user_id=user.id, token_digest=self.digest.digest(refresh),
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(seconds=self.settings.refresh_token_ttl_seconds),
            conn=conn,
        )
        access = self.access.issue(user_id=user.id, username=user.username, permissions=user.permissions,
                                   tier=user.tier, family=family)
        return TokenPair(access, refresh, self.access.ttl_seconds)

    async def refresh(self, token: str) -> TokenPair:
        """Rotate: the presented token is spent and a new pair issued in its family. A spent token presented
        again means it leaked (or the client raced itself): the whole family is revoked, access tokens too."""
        if not token:
            raise Unauthenticated("Invalid or expired refresh token")
        reused = None
        async with self.repo.transaction() as conn:
            row = await self.repo.claim_refresh_token(conn, self.digest.digest(token))
            if row is None or row.revoked_at is not None:
                raise Unauthenticated("Invalid or expired refresh token")
            if row.used_at is not None:
                reused = row.family_id
            elif row.expires_at <= dt.datetime.now(dt.UTC):
                raise Unauthenticated("Invalid or expired refresh token")
            else:
                user = await self.repo.user_by_id(row.user_id)
                if user is None or user.disabled:
                    raise Unauthenticated("Invalid or expired refresh token")
                pair = await self._issue(user, row.family_id, conn)
        if reused is not None:
            await self.revoke_family(reused)
            log.warning("refresh token reused: family revoked", family=reused)
            raise Unauthenticated("Refresh token already used; the session has been revoked, log in again")
        return pair

    async def revoke_family(self, family: str) -> None:
        await self.repo.revoke_family(family)
        # Access tokens of the family die too: they live at most access_token_ttl_seconds.
        await self._redis.set(self._family_key(family), "1", ex=self.settings.access_token_ttl_seconds + 60)

    def _family_key(self, family: str) -> str:
        return redis_key(self._prefix, "auth", "family", family)

    def _key_cache_key(self, secret_digest: str) -> str:
        return redis_key(self._prefix, "auth", "key", secret_digest)

    # -- API keys -----------------------------------------------------------------------------------------------
    async def _caller(self, principal: Principal | None) -> UserRow:
        if principal is None:
            raise Unauthenticated(MISSING_TOKEN)
        user = await self.repo.user_by_id(principal.user_id)
        if user is None or user.disabled:
            raise Unauthenticated(INVALID_TOKEN)
        return user

    async def create_key(
        self, principal: Principal | None, *, name: str, permissions: list[str], requests_per_minute: int | None,
        tokens_per_minute: int | None, expires_at: str | None,
    ) -> tuple[ApiKeyView, str]:
        """A new key for the caller; (its view, its secret). Never more than the caller holds (see `grant`)."""
        user = await self._caller(principal)
        assert principal is not None
        req = key_request(name=name, permissions=permissions, requests_per_minute=requests_per_minute,
                          tokens_per_minute=tokens_per_minute, expires_at=expires_at, now=dt.datetime.now(dt.UTC))
        new = grant(req, await self._bounds(principal), tier(user.tier))
        secret = credentials.new_api_key()
        row = await self.repo.create_key(
            key_id=credentials.new_key_id(), user_id=user.id, name=new.name, secret_digest=self.digest.digest(secret),
            permissions=new.permissions, requests_per_minute=new.requests_per_minute,
            tokens_per_minute=new.tokens_per_minute, tokens_per_month=new.tokens_per_month,
            expires_at=new.expires_at,
        )
        log.info("api key created", key_id=row.id, permissions=new.permissions, by_key=principal.key_id or None)
        return _key_view(row), secret

    async def _bounds(self, principal: Principal) -> Bounds:
        """The caller's own: a user's permissions (their tier caps limits later), or the calling key's effective
        permissions, limits, quota and expiry as the per-request check enforces them."""
        if not principal.key_id:
            return Bounds(principal.permissions, 0, 0, 0, None, by_key=False)
        row = await self.repo.key_by_id(principal.key_id)
        if row is None or row.user_id != principal.user_id:
            raise Unauthenticated(INVALID_TOKEN)
        rec = _key_record(row)
        if rec["revoked"]:
            raise Unauthenticated(INVALID_TOKEN)
        return Bounds(principal.permissions, rec["rpm"], rec["tpm"], rec["tpmo"], row.expires_at, by_key=True)

    async def list_keys(self, principal: Principal | None) -> list[ApiKeyView]:
        user = await self._caller(principal)
        return [_key_view(k) for k in await self.repo.active_keys(user.id)]

    async def revoke_key(self, principal: Principal | None, key_id: str) -> None:
        """Revoke one of the caller's keys (an admin: any key). Every replica refuses it from now on: the Redis
        entry the checks read is overwritten with a tombstone."""
        user = await self._caller(principal)
        assert principal is not None
        key = await self.repo.key_by_id(key_id)
        if key is None or key.revoked_at is not None or (key.user_id != user.id and not principal.allows(ADMIN)):
            raise NotFound(f"No API key with ID {key_id}", reason="API_KEY_NOT_FOUND")
        digest = await self.repo.revoke_key(key_id)
        if digest is None:
            raise NotFound(f"No API key with ID {key_id}", reason="API_KEY_NOT_FOUND")
        await self._redis.set(self._key_cache_key(digest), json.dumps({"revoked": True}), ex=TOMBSTONE_SECONDS)
        log.info("api key revoked", key_id=key_id)

    # -- per request: who is calling, may they -----------------------------------------------------------------
    async def authenticate(self, credential: str) -> Identity:
        if credential.startswith(credentials.API_KEY_PREFIX):
            return await self._authenticate_key(credential)
        try:
            claims = self.access.verify(credential)
        except InvalidToken as exc:
            raise CredentialRejected("expired" if str(exc) == "ExpiredSignatureError" else "invalid") from None
        if await self._redis.exists(self._family_key(claims.family)):
            raise CredentialRejected("revoked")
        principal = Principal(claims.user_id, permissions=frozenset(claims.permissions))
        return Identity(principal, Limits.for_user(tier(claims.tier)), claims.tier, claims.username,
                        claims.expires_at)

    async def _authenticate_key(self, secret: str) -> Identity:
        digest = self.digest.digest(secret)
        cache_key = self._key_cache_key(digest)
        raw = await self._redis.get(cache_key)
        if raw is not None:
            rec = json.loads(raw)
        else:
            row = await self.repo.key_by_digest(digest)
            if row is None or not self.digest.matches(secret, row.secret_digest):
                raise CredentialRejected("invalid")
            rec = _key_record(row)
            # NX: never overwrite a revocation's tombstone written since the row was read.
            await self._redis.set(cache_key, json.dumps(rec), nx=True, ex=self.settings.key_cache_seconds)
        if rec.get("revoked"):
            raise CredentialRejected("revoked")
        if rec["expires_at"] is not None and rec["expires_at"] <= time.time():
            raise CredentialRejected("expired")
        t: Tier = tier(rec["tier"])
        principal = Principal(rec["user_id"], rec["id"], frozenset(rec["permissions"]))
        return Identity(principal, Limits.for_key(t, rec["rpm"], rec["tpm"], rec["tpmo"]), t.name, rec["username"],
                        rec["expires_at"])

    async def authorize(self, verb: str, path: str, authorization: str, api_key: str) -> Verdict:
        """ext_authz: public routes pass; others need a valid credential holding the route's permission.
        Unknown paths need a credential only (the transcoder answers them 404)."""
        route = self.routes.resolve(verb, path)
        if (route is not None and route.public) or path.split("?", 1)[0] in PUBLIC_PATHS:
            return Verdict(None, route)
        credential = bearer(authorization) or api_key.strip()
        if not credential:
            raise CredentialRejected("missing", MISSING_TOKEN)
        identity = await self.authenticate(credential)
        if route is not None and route.permission and not identity.principal.allows(route.permission):
            raise PermissionDenied(FORBIDDEN, metadata={"required_permission": route.permission})
        return Verdict(identity, route)

    # -- usage --------------------------------------------------------------------------------------------------
    async def record_usage(self, principal: Principal, tokens: int, request_id: str,
                           at_ms: int | None = None) -> dict | None:
        """Add a finished request's tokens to its principal's counters, once per request id; None for a repeat."""
        now_ms = int(time.time() * 1000)
        return await self.limiter.record_tokens(principal, tokens, request_id, min(at_ms or now_ms, now_ms))

    async def resolve(self, *, key_id: str = "", user_id: str = "") -> tuple[Identity, bool]:
        """(identity, active) of a key or user by id (GetPrincipal, RecordUsage); NotFound when unknown."""
        if key_id:
            row = await self.repo.key_by_id(key_id)
            if row is None:
                raise NotFound(f"No API key with ID {key_id}", reason="API_KEY_NOT_FOUND")
            rec = _key_record(row)
            t = tier(rec["tier"])
            active = not rec["revoked"] and (rec["expires_at"] is None or rec["expires_at"] > time.time())
            principal = Principal(row.user_id, row.id, frozenset(rec["permissions"]))
            limits = Limits.for_key(t, rec["rpm"], rec["tpm"], rec["tpmo"])
            return Identity(principal, limits, t.name, row.username, rec["expires_at"]), active
        user = await self.repo.user_by_id(user_id)
        if user is None:
            raise NotFound(f"No user with ID {user_id}", reason="USER_NOT_FOUND")
        principal = Principal(user.id, permissions=frozenset(user.permissions))
        return Identity(principal, Limits.for_user(tier(user.tier)), user.tier, user.username, None), not user.disabled
