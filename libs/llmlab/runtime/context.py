"""Per-request context (request id, principal) carried in contextvars across awaits and into logs."""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass

# Set by the gateway's ext_authz (the auth service) only: the listener drops client-sent x-llmlab-* headers.
PRINCIPAL_HEADER = "x-llmlab-principal"
PERMISSIONS_HEADER = "x-llmlab-permissions"
ADMIN = "admin"  # the permission that implies every other

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmlab_request_id", default="")
principal_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmlab_principal", default="")
permissions_var: contextvars.ContextVar[str] = contextvars.ContextVar("llmlab_permissions", default="")


@dataclass(frozen=True)
class Principal:
    """Who a request runs for: a user (JWT), or an API key acting for its owning user."""

    user_id: str
    key_id: str = ""
    permissions: frozenset[str] = frozenset()

    def header(self) -> str:
        """The x-llmlab-principal value: `user:<id>` or `user:<id>/key:<key id>`."""
        return f"user:{self.user_id}/key:{self.key_id}" if self.key_id else f"user:{self.user_id}"

    def permissions_header(self) -> str:
        return ",".join(sorted(self.permissions))

    def allows(self, permission: str) -> bool:
        return ADMIN in self.permissions or permission in self.permissions

    @classmethod
    def parse(cls, header: str, permissions: str = "") -> Principal | None:
        """The inverse of header()/permissions_header(); None for an empty or malformed header."""
        user, _, key = header.partition("/")
        if not user.startswith("user:") or len(user) == 5 or (key and not key.startswith("key:")):
            return None
        return cls(user[5:], key[4:], frozenset(p for p in permissions.split(",") if p))


def current_principal() -> Principal | None:
    """The principal of the RPC being served, from the gateway's trusted headers; None for internal callers."""
    return Principal.parse(principal_var.get(), permissions_var.get())


def new_request_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def current_request_id() -> str:
    """The request id of the RPC being served (the gateway's x-request-id), or "" outside any request."""
    return request_id_var.get()
