"""Token accounting from the inference service's `usage.recorded` events (streamed requests included)."""

from __future__ import annotations

import structlog

from llmlab.runtime.context import Principal
from llmlab.runtime.streams import StreamMessage

from .domain import Auth

log = structlog.get_logger(__name__)

USAGE_STREAM = "usage"  # services/inference/usage.py publishes here


class UsageCounter:
    """Adds each finished request's real tokens to its principal's minute and month counters, once per request."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    async def handle(self, msg: StreamMessage) -> None:
        if msg.type != "usage.recorded":
            return
        principal = Principal.parse(str(msg.data.get("principal") or ""))
        if principal is None:  # internal callers (no gateway principal) are not limited
            return
        tokens = int(msg.data.get("total_tokens") or 0)
        request_id = str(msg.data.get("request_id") or msg.request_id or msg.id)
        # Counted in the minute and month the request finished in, however late the event is read (a consumer
        # group created on a long stream replays old events into old buckets, not into the current ones).
        at_ms = int(msg.published_at * 1000) if msg.published_at else None
        counted = await self._auth.record_usage(principal, tokens, request_id, at_ms)
        if counted is None:
            log.debug("usage already counted", request_id=request_id)
