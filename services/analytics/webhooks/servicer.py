"""WebhookService: proto ⇄ domain for `/v1/webhooks` (the caller's own endpoints and their delivery log)."""

from __future__ import annotations

from typing import Any

from llmlab.analytics.v1 import webhook_service_pb2 as pb
from llmlab.analytics.v1 import webhook_service_pb2_grpc as pb_grpc
from llmlab.runtime import NotFound, Unauthenticated
from llmlab.runtime.context import current_principal
from llmlab.runtime.errors import serving_validation_error

from ..settings import AnalyticsSettings
from . import domain
from .repository import Endpoint, WebhookRepository

MAX_DELIVERIES = 100


def _caller() -> str:
    p = current_principal()
    if p is None:
        raise Unauthenticated("Webhooks belong to a user: call through the gateway with a credential")
    return p.user_id


def _webhook(e: Endpoint) -> pb.Webhook:
    return pb.Webhook(id=e.id, object="webhook_endpoint", url=e.url, events=e.events, status="enabled",
                      created_at=int(e.created_at.timestamp()))


def _not_found(webhook_id: str) -> NotFound:
    return NotFound(f"No webhook endpoint {webhook_id}", reason="WEBHOOK_NOT_FOUND",
                    details={"webhook_id": webhook_id})


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    def __init__(self, repo: WebhookRepository, settings: AnalyticsSettings) -> None:
        self._repo = repo
        self._s = settings

    async def CreateWebhook(self, request: pb.CreateWebhookRequest, context: Any) -> pb.CreateWebhookResponse:
        user = _caller()
        events = domain.check_events(list(request.events))
        secret = domain.check_secret(request.secret)
        url = await domain.check_url(request.url, require_https=self._s.webhook_require_https,
                                     allow_private=self._s.webhook_allow_private)
        e = await self._repo.create(user, url, events, secret)
        return pb.CreateWebhookResponse(id=e.id, object="webhook_endpoint", url=e.url, events=e.events,
                                        status="enabled", created_at=int(e.created_at.timestamp()))

    async def ListWebhooks(self, request: pb.ListWebhooksRequest, context: Any) -> pb.ListWebhooksResponse:
        return pb.ListWebhooksResponse(object="list", data=[_webhook(e) for e in await self._repo.list(_caller())])

    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Any) -> pb.Webhook:
        e = await self._repo.get(_caller(), request.webhook_id)
        if e is None:
            raise _not_found(request.webhook_id)
        return _webhook(e)

    async def DeleteWebhook(self, request: pb.DeleteWebhookRequest, context: Any) -> pb.DeleteWebhookResponse:
        if not await self._repo.delete(_caller(), request.webhook_id):
            raise _not_found(request.webhook_id)
        return pb.DeleteWebhookResponse(id=request.webhook_id, object="webhook_endpoint", deleted=True)

    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: Any
    ) -> pb.ListWebhookDeliveriesResponse:
        limit = request.limit if request.HasField("limit") else 20
        if not 1 <= limit <= MAX_DELIVERIES:
            raise serving_validation_error("limit", limit, f"must be between 1 and {MAX_DELIVERIES}")
        if await self._repo.get(_caller(), request.webhook_id) is None:
            raise _not_found(request.webhook_id)
        rows = await self._repo.deliveries(request.webhook_id, limit)
        return pb.ListWebhookDeliveriesResponse(object="list", data=[pb.WebhookDelivery(
            id=r["id"], object="webhook_delivery", event_id=r["event_id"], event_type=r["event_type"],
            status=r["status"], attempts=r["attempts"], last_error=r["last_error"],
            created_at=int(r["created_at"].timestamp()),
            **({"last_status_code": r["last_status_code"]} if r["last_status_code"] is not None else {}),
            **({"next_attempt_at": int(r["next_attempt_at"].timestamp())} if r["status"] == "pending" else {}),
            **({"delivered_at": int(r["delivered_at"].timestamp())} if r["delivered_at"] else {}),
        ) for r in rows])
