"""All SQL of the auth service (schema from the pool's search_path)."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class UserRow:
    id: str
    username: str
    password_hash: str
    permissions: list[str]
    tier: str
    disabled: bool


@dataclass(frozen=True)
class KeyRow:
    """An API key with what its owner contributes (owner permissions and tier)."""

    id: str
    user_id: str
    username: str
    name: str
    secret_digest: str
    permissions: list[str]
    requests_per_minute: int
    tokens_per_minute: int
    tokens_per_month: int
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None
    owner_permissions: list[str]
    owner_tier: str
    owner_disabled: bool


@dataclass(frozen=True)
class RefreshRow:
    id: str
    family_id: str
    user_id: str
    expires_at: dt.datetime
    used_at: dt.datetime | None
    revoked_at: dt.datetime | None


def _user(r: asyncpg.Record) -> UserRow:
    return UserRow(str(r["id"]), r["username"], r["password_hash"], list(r["permissions"]), r["tier"], r["disabled"])


_KEY_SELECT = """
    SELECT k.id, k.user_id, u.username, k.name, k.secret_digest, k.permissions, k.requests_per_minute,
           k.tokens_per_minute, k.tokens_per_month, k.created_at, k.expires_at, k.revoked_at,
           u.permissions AS owner_permissions, u.tier AS owner_tier, u.disabled AS owner_disabled
    FROM api_keys k JOIN users u ON u.id = k.user_id
"""


def _key(r: asyncpg.Record) -> KeyRow:
    return KeyRow(
        id=r["id"], user_id=str(r["user_id"]), username=r["username"], name=r["name"],
        secret_digest=r["secret_digest"], permissions=list(r["permissions"]),
        requests_per_minute=r["requests_per_minute"], tokens_per_minute=r["tokens_per_minute"],
        tokens_per_month=r["tokens_per_month"], created_at=r["created_at"], expires_at=r["expires_at"],
        revoked_at=r["revoked_at"], owner_permissions=list(r["owner_permissions"]), owner_tier=r["owner_tier"],
        owner_disabled=r["owner_disabled"],
    )


class AuthRepository:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    # -- secrets ----------------------------------------------------------------------------------------------
    async def secret(self, name: str, candidate: str) -> str:
        """The stored secret `name`; `candidate` is stored first if there is none (the first replica wins)."""
        await self._pool.execute(
            "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", name, candidate
        )
        return await self._pool.fetchval("SELECT value FROM secrets WHERE name = $1", name)

    # -- users ------------------------------------------------------------------------------------------------
    async def create_user(
        self, username: str, password_hash: str, permissions: list[str], tier: str
    ) -> UserRow | None:
        """The new user, or None when the username is taken (case-insensitively)."""
        row = await self._pool.fetchrow(
            """INSERT INTO users (username, password_hash, permissions, tier) VALUES ($1, $2, $3, $4)
               ON CONFLICT ((lower(username))) DO NOTHING RETURNING *""",
            username, password_hash, permissions, tier,
        )
        return _user(row) if row else None

    async def user_by_name(self, username: str) -> UserRow | None:
        row = await self._pool.fetchrow("SELECT * FROM users WHERE lower(username) = lower($1)", username)
        return _user(row) if row else None

    async def user_by_id(self, user_id: str) -> UserRow | None:
        try:
            uid = uuid.UUID(user_id)
        except ValueError:
            return None
        row = await self._pool.fetchrow("SELECT * FROM users WHERE id = $1", uid)
        return _user(row) if row else None

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1", uuid.UUID(user_id), password_hash
        )

    # -- API keys ---------------------------------------------------------------------------------------------
    async def create_key(
        self, *, key_id: str, user_id: str, name: str, secret_digest: str, permissions: list[str],
        requests_per_minute: int, tokens_per_minute: int, tokens_per_month: int, expires_at: dt.datetime | None,
    ) -> KeyRow:
        await self._pool.execute(
            """INSERT INTO api_keys (id, user_id, name, secret_digest, permissions, requests_per_minute,
                                     tokens_per_minute, tokens_per_month, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)""",
            key_id, uuid.UUID(user_id), name, secret_digest, permissions, requests_per_minute, tokens_per_minute,
            tokens_per_month, expires_at,
        )
        key = await self.key_by_id(key_id)
        assert key is not None
        return key

    async def key_by_digest(self, secret_digest: str) -> KeyRow | None:
        row = await self._pool.fetchrow(_KEY_SELECT + " WHERE k.secret_digest = $1", secret_digest)
        return _key(row) if row else None

    async def key_by_id(self, key_id: str) -> KeyRow | None:
        row = await self._pool.fetchrow(_KEY_SELECT + " WHERE k.id = $1", key_id)
        return _key(row) if row else None

    async def active_keys(self, user_id: str) -> list[KeyRow]:
        rows = await self._pool.fetch(
            _KEY_SELECT + """ WHERE k.user_id = $1 AND k.revoked_at IS NULL
                              AND (k.expires_at IS NULL OR k.expires_at > now())
                              ORDER BY k.created_at DESC, k.id""",
            uuid.UUID(user_id),
        )
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> str | None:
        """Revoke an active key; its secret digest, or None when there was no such active key."""
        return await self._pool.fetchval(
            "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING secret_digest",
            key_id,
        )

    # -- refresh tokens ---------------------------------------------------------------------------------------
    async def add_refresh_token(
        self, *, family_id: str, user_id: str, token_digest: str, expires_at: dt.datetime,
        conn: asyncpg.Connection | None = None,
    ) -> None:
        await (conn or self._pool).execute(
            """INSERT INTO refresh_tokens (family_id, user_id, token_digest, expires_at)
               VALUES ($1, $2, $3, $4)""",
            uuid.UUID(family_id), uuid.UUID(user_id), token_digest, expires_at,
        )

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One connection in one transaction."""
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    async def claim_refresh_token(self, conn: asyncpg.Connection, token_digest: str) -> RefreshRow | None:
        """Lock the token's row (concurrent refreshes of one token serialise here) and return it as it was."""
        row = await conn.fetchrow(
            "SELECT * FROM refresh_tokens WHERE token_digest = $1 FOR UPDATE", token_digest
        )
        if row is None:
            return None
        if row["used_at"] is None and row["revoked_at"] is None:
            await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE id = $1", row["id"])
        return RefreshRow(str(row["id"]), str(row["family_id"]), str(row["user_id"]), row["expires_at"],
                          row["used_at"], row["revoked_at"])

    async def revoke_family(self, family_id: str) -> int:
        return int((await self._pool.execute(
            "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL",
            uuid.UUID(family_id),
        )).split()[-1])
