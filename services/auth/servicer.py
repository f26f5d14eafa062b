"""AuthService servicer: translation between protos and the auth domain only."""

from __future__ import annotations

import time
from typing import Any

from llmlab.auth.v1 import auth_service_pb2 as pb
from llmlab.auth.v1 import auth_service_pb2_grpc as pb_grpc
from llmlab.runtime import validation_error
from llmlab.runtime.context import Principal, current_principal
from llmlab.runtime.envelope import iso, value

from .domain import ApiKeyView, Auth, Identity, TokenPair


def client_address(context: Any) -> str:
    """The caller's address as the gateway saw it (the last X-Forwarded-For hop is Envoy's own), else the peer."""
    metadata = dict(context.invocation_metadata() or ())
    forwarded = metadata.get("x-forwarded-for", "")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()
    peer = context.peer() or ""
    return peer.rpartition(":")[0] if peer.count(":") > 1 else peer


def _pair(cls: type, pair: TokenPair) -> Any:
    return cls(access_token=pair.access_token, refresh_token=pair.refresh_token, token_type="Bearer",
               expires_in=pair.expires_in)


def _rate_limit(requests_per_minute: int, tokens_per_minute: int) -> pb.RateLimit:
    return pb.RateLimit(requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute)


def _api_key(k: ApiKeyView) -> pb.ApiKey:
    return pb.ApiKey(
        id=k.id, name=k.name, permissions=k.permissions,
        rate_limit=_rate_limit(k.requests_per_minute, k.tokens_per_minute), created_at=iso(k.created_at),
        expires_at=value(iso(k.expires_at) if k.expires_at else None),
    )


def iso_epoch(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _principal(identity: Identity, active: bool) -> pb.Principal:
    p, limits, scope = identity.principal, identity.limits, "key" if identity.principal.key_id else "user"
    return pb.Principal(
        kind=pb.PRINCIPAL_KIND_API_KEY if p.key_id else pb.PRINCIPAL_KIND_USER,
        user_id=p.user_id, username=identity.username, key_id=p.key_id, permissions=sorted(p.permissions),
        rate_limit=_rate_limit(getattr(limits, f"{scope}_requests_per_minute"),
                               getattr(limits, f"{scope}_tokens_per_minute")),
        tokens_per_month=getattr(limits, f"{scope}_tokens_per_month"), tier=identity.tier,
        expires_at=iso_epoch(identity.expires_at) if identity.expires_at else "", active=active,
    )


class AuthServicer(pb_grpc.AuthServiceServicer):
    """The research family's token endpoints, the serving family's API keys, and the internal usage and principal
    lookups."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    async def CreateToken(self, request: pb.CreateTokenRequest, context: Any) -> pb.CreateTokenResponse:
        pair = await self._auth.login(request.username, request.password, client_address(context))
        return _pair(pb.CreateTokenResponse, pair)

    async def RefreshToken(self, request: pb.RefreshTokenRequest, context: Any) -> pb.RefreshTokenResponse:
        return _pair(pb.RefreshTokenResponse, await self._auth.refresh(request.refresh_token))

    async def CreateApiKey(self, request: pb.CreateApiKeyRequest, context: Any) -> pb.CreateApiKeyResponse:
        limit = request.rate_limit
        view, secret = await self._auth.create_key(
            current_principal(), name=request.name, permissions=list(request.permissions),
            requests_per_minute=limit.requests_per_minute if limit.HasField("requests_per_minute") else None,
            tokens_per_minute=limit.tokens_per_minute if limit.HasField("tokens_per_minute") else None,
            expires_at=request.expires_at if request.HasField("expires_at") else None,
        )
        key = _api_key(view)
        return pb.CreateApiKeyResponse(id=key.id, name=key.name, api_key=secret, permissions=key.permissions,
                                       rate_limit=key.rate_limit, created_at=key.created_at,
                                       expires_at=key.expires_at)

    async def ListApiKeys(self, request: pb.ListApiKeysRequest, context: Any) -> pb.ListApiKeysResponse:
        keys = await self._auth.list_keys(current_principal())
        return pb.ListApiKeysResponse(object="list", data=[_api_key(k) for k in keys])

    async def DeleteApiKey(self, request: pb.DeleteApiKeyRequest, context: Any) -> pb.DeleteApiKeyResponse:
        await self._auth.revoke_key(current_principal(), request.key_id)
        return pb.DeleteApiKeyResponse(id=request.key_id, deleted=True)

    async def RecordUsage(self, request: pb.RecordUsageRequest, context: Any) -> pb.RecordUsageResponse:
        if not request.request_id:
            raise validation_error("request_id", "", "is required (usage is counted once per request id)")
        identity, _ = await self._auth.resolve(key_id=request.key_id, user_id=request.user_id)
        principal = Principal(identity.principal.user_id, identity.principal.key_id)
        now_ms = int(time.time() * 1000)
        counted = await self._auth.record_usage(
            principal, request.prompt_tokens + request.completion_tokens, request.request_id
        )
        usage = await self._auth.limiter.token_usage(principal, now_ms)
        scope = "key" if principal.key_id else "user"

        def window(name: str) -> pb.UsageWindow:
            used, ends_ms = usage[(scope, name)]
            limit = getattr(identity.limits, f"{scope}_{name}")
            return pb.UsageWindow(
                limit=limit, used=used, remaining=max(0, limit - used) if limit else 0,
                reset_after_seconds=max(0, (ends_ms - now_ms + 999) // 1000), exhausted=bool(limit) and used >= limit,
            )

        return pb.RecordUsageResponse(recorded=counted is not None, tokens_per_minute=window("tokens_per_minute"),
                                      tokens_per_month=window("tokens_per_month"))

    async def GetPrincipal(self, request: pb.GetPrincipalRequest, context: Any) -> pb.GetPrincipalResponse:
        which = request.WhichOneof("lookup")
        if which is None:
            raise validation_error("lookup", None, "key_id or user_id is required")
        identity, active = await self._auth.resolve(**{which: getattr(request, which)})
        return pb.GetPrincipalResponse(principal=_principal(identity, active))
