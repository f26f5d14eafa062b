"""What every servicer of the files service shares: its dependencies, the caller, the public URL base."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from llmlab.runtime.context import current_principal
from llmlab.runtime.envelope import iso

from ..blobstore import BlobStore
from ..repository import FilesRepository
from ..settings import FilesSettings
from ..signing import Signer

DEFAULT_PUBLIC_URL = "http://127.0.0.1:8080"


@dataclass
class Deps:
    repo: FilesRepository
    store: BlobStore
    signer: Signer
    settings: FilesSettings


def owner_id() -> str | None:
    """The calling user (from the gateway's principal); None for an internal caller."""
    principal = current_principal()
    return principal.user_id if principal else None


def base_url(settings: FilesSettings, context: Any) -> str:
    """Where clients reach the gateway: the setting, else the address this request came in on."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    md = {m.key: m.value for m in (context.invocation_metadata() or ())}
    host = md.get("x-forwarded-host")
    if not host:
        return DEFAULT_PUBLIC_URL
    return f"{md.get('x-forwarded-proto', 'http')}://{host}"


def expiry(settings: FilesSettings) -> tuple[int, str, dt.datetime]:
    """An expiry `url_ttl_seconds` from now: unix seconds, RFC 3339 text, datetime."""
    at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=settings.url_ttl_seconds)
    return int(at.timestamp()), iso(at), at


async def body_chunks(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    """The raw body of a client-streamed HttpBody request: the first message's bytes, then each next one's."""
    if first.http_body.data:
        yield first.http_body.data
    async for message in rest:
        if message.http_body.data:
            yield message.http_body.data
