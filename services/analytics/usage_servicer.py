"""UsageService: proto ⇄ domain for `GET /v1/usage` and `GET /v1/usage/billing`."""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2

from llmlab.analytics.v1 import usage_service_pb2 as pb
from llmlab.analytics.v1 import usage_service_pb2_grpc as pb_grpc
from llmlab.auth.v1 import auth_service_pb2 as apb
from llmlab.auth.v1 import auth_service_pb2_grpc as apb_grpc
from llmlab.runtime import Unavailable
from llmlab.runtime.context import current_principal
from llmlab.runtime.envelope import utcnow

from . import usage
from .usage_repository import UsageRepository

LOOKUP_TIMEOUT_SECONDS = 5.0


class UsageServicer(pb_grpc.UsageServiceServicer):
    def __init__(self, repo: UsageRepository, auth: grpc.aio.Channel) -> None:
        self._repo = repo
        self._auth = apb_grpc.AuthServiceStub(auth)

    async def GetUsage(self, request: pb.GetUsageRequest, context: Any) -> pb.GetUsageResponse:
        user = usage.subject(current_principal(), request.user_id)
        r = usage.Range.parse(request.start_date, request.end_date, request.granularity, utcnow().date())
        # No registry check: a model removed from the registry keeps its usage history, and the ledger shows it.
        out = await usage.usage(self._repo, user, r, request.model or None)
        return pb.GetUsageResponse(
            data=[pb.UsageBucket(date=d["date"], model=d["model"], requests=d["requests"],
                                 tokens=pb.UsageTokens(**d["tokens"]), cost=pb.UsageCost(**d["cost"]),
                                 latency=pb.UsageLatency(**d["latency"])) for d in out["data"]],
            total=pb.UsageTotal(**out["total"]))

    async def _tokens_per_month(self, user: str | None) -> int:
        """The user's monthly token quota as the rate limiter enforces it (auth's GetPrincipal); 0 = unlimited."""
        if user is None:
            return 0
        try:
            found = await self._auth.GetPrincipal(apb.GetPrincipalRequest(user_id=user),
                                                  timeout=LOOKUP_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return 0
            raise Unavailable("The auth service cannot be reached, please retry", reason="AUTH_UNAVAILABLE") from None
        return found.principal.tokens_per_month

    async def GetBilling(self, request: pb.GetBillingRequest, context: Any) -> pb.GetBillingResponse:
        user = usage.subject(current_principal(), request.user_id)
        first, last, following = usage.month_bounds(utcnow().date())
        r = usage.Range(first, last, "day")
        month = await self._repo.month(user, r.since, r.until)
        quota = await self._tokens_per_month(user)
        limits = pb.BillingLimits(**({"tokens_per_month": float(quota)} if quota else {}))
        return pb.GetBillingResponse(
            current_period=pb.BillingPeriod(
                start_date=first.isoformat(), end_date=last.isoformat(),
                usage=pb.BillingUsage(requests=month["requests"], tokens=month["tokens"],
                                      cost=round(month["cost"], 8)),
                limits=limits),
            payment_method=struct_pb2.Value(null_value=struct_pb2.NULL_VALUE),
            next_billing_date=following.isoformat())
