"""Webhook rules: the events, the secret and signature (Standard Webhooks), target URL safety, the backoff."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

from llmlab.runtime.errors import serving_validation_error as invalid

EVENTS = ("batch.completed", "batch.failed", "fine_tuning.job.completed", "fine_tuning.job.failed",
          "usage.limit.reached")
MAX_SECRET = 256
MAX_URL = 2048
MAX_BACKOFF_SECONDS = 3600.0


def signing_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after `whsec_` (the spec's form), else the secret's UTF-8 bytes."""
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret[6:], validate=True)
        except (binascii.Error, ValueError):
            pass
    return secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value: `v1,` + base64 HMAC-SHA256 of `<id>.<timestamp>.<body>`."""
    mac = hmac.new(signing_key(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def event_id(stream: str, message_id: str, webhook_event: str) -> str:
    """A stable event id: the same source event gives the same id on every retry, replay and rebuild."""
    digest = hashlib.sha256(f"{stream}:{message_id}:{webhook_event}".encode()).hexdigest()[:24]
    return f"evt_{digest}"


def body(event: str, evt_id: str, created_at: int, data: dict[str, Any]) -> str:
    return json.dumps({"id": evt_id, "object": "event", "type": event, "created_at": created_at, "data": data},
                      separators=(",", ":"), sort_keys=True, default=str)


def backoff(attempts: int, base: float) -> float:
    """Seconds before the next attempt after `attempts` failed ones: base·2^(attempts-1), at most an hour."""
    return min(MAX_BACKOFF_SECONDS, base * 2 ** max(0, attempts - 1))


def check_events(events: list[str]) -> list[str]:
    if not events:
        raise invalid("events", events, f"must name at least one of {', '.join(EVENTS)}")
    for e in events:
        if e not in EVENTS:
            raise invalid("events", e, f"must be one of {', '.join(EVENTS)}")
    return list(dict.fromkeys(events))


def check_secret(secret: str) -> str:
    if not secret:
        raise invalid("secret", secret, "is required (e.g. whsec_ followed by base64 of random bytes)")
    if len(secret) > MAX_SECRET:
        raise invalid("secret", "...", f"must be at most {MAX_SECRET} characters")
    return secret


def _public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved
                or ip.is_unspecified or (isinstance(ip, ipaddress.IPv4Address) and ip in _CGNAT))


_CGNAT = ipaddress.ip_network("100.64.0.0/10")


async def resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(i[4][0]) for i in infos})


async def check_url(url: str, *, require_https: bool, allow_private: bool) -> str:
    """An absolute http(s) URL whose host resolves only to public addresses (unless private ones are allowed).
    Checked at registration and again before every attempt, so a DNS change cannot point it inward later."""
    if len(url) > MAX_URL:
        raise invalid("url", url, f"must be at most {MAX_URL} characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid("url", url, "must be an absolute http or https URL")
    if require_https and parts.scheme != "https":
        raise invalid("url", url, "must use https")
    if parts.username or parts.password:
        raise invalid("url", url, "must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise invalid("url", url, "has an invalid port") from None
    if not allow_private:
        try:
            addresses = await resolve(parts.hostname, port)
        except OSError:
            raise invalid("url", url, "host does not resolve") from None
        for a in addresses:
            if not _public(ipaddress.ip_address(a.split("%")[0])):
                raise invalid("url", url, "must not point to a private, loopback or link-local address")
    return url
