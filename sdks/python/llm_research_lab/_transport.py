"""HTTP for the clients: credentials, JSON, retries on 429 honouring Retry-After, errors as exceptions."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

import httpx

from .errors import error_for

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 60.0
MAX_RETRY_WAIT = 300.0


def _headers(api_key: str | None, access_token: str | None) -> dict[str, str]:
    h = {"accept": "application/json", "user-agent": "llm-research-lab-python/0.1.0"}
    if api_key:
        h["x-api-key"] = api_key
    if access_token:
        h["authorization"] = f"Bearer {access_token}"
    return h


def retry_delay(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before retrying a 429: Retry-After (seconds or an HTTP date), else the body's retry_after,
    else exponential backoff."""
    raw = response.headers.get("retry-after")
    if raw:
        try:
            return min(MAX_RETRY_WAIT, max(0.0, float(raw)))
        except ValueError:
            when = email.utils.parsedate_to_datetime(raw)
            if when is not None:
                return min(MAX_RETRY_WAIT, max(0.0, when.timestamp() - time.time()))
    try:
        return min(MAX_RETRY_WAIT, float(response.json().get("retry_after")))
    except (ValueError, TypeError, AttributeError):
        return min(MAX_RETRY_WAIT, 0.5 * 2**attempt)


def _clean(params: dict[str, Any] | None) -> dict[str, Any] | None:
    if not params:
        return None
    out: dict[str, Any] = {}
    for k, v in params.items():
        if v is None:
            continue
        out[k] = ",".join(v) if isinstance(v, list | tuple) else v
    return out


def _result(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text[:500]}
        raise error_for(response.status_code, body, dict(response.headers))
    if not response.content:
        return None
    return response.json()


class SyncTransport:
    def __init__(self, base_url: str, api_key: str | None, access_token: str | None, timeout: float,
                 max_retries: int, http_client: httpx.Client | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.http = http_client or httpx.Client(timeout=timeout)
        self.headers = _headers(api_key, access_token)
        self.sleep = time.sleep

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        url = path if path.startswith("http") else self.base_url + path
        for attempt in range(self.max_retries + 1):
            r = self.http.request(method, url, json=json, params=_clean(params), headers=self.headers)
            if r.status_code == 429 and attempt < self.max_retries:
                self.sleep(retry_delay(r, attempt))
                continue
            return _result(r)
        raise AssertionError("unreachable")

    def put_bytes(self, url: str, data: bytes, content_type: str) -> Any:
        return _result(self.http.put(url, content=data, headers={"content-type": content_type}))

    def close(self) -> None:
        self.http.close()


class AsyncTransport:
    def __init__(self, base_url: str, api_key: str | None, access_token: str | None, timeout: float,
                 max_retries: int, http_client: httpx.AsyncClient | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.http = http_client or httpx.AsyncClient(timeout=timeout)
        self.headers = _headers(api_key, access_token)
        self.sleep = asyncio.sleep

    async def request(self, method: str, path: str, *, json: Any = None,
                      params: dict[str, Any] | None = None) -> Any:
        url = path if path.startswith("http") else self.base_url + path
        for attempt in range(self.max_retries + 1):
            r = await self.http.request(method, url, json=json, params=_clean(params), headers=self.headers)
            if r.status_code == 429 and attempt < self.max_retries:
                await self.sleep(retry_delay(r, attempt))
                continue
            return _result(r)
        raise AssertionError("unreachable")

    async def put_bytes(self, url: str, data: bytes, content_type: str) -> Any:
        return _result(await self.http.put(url, content=data, headers={"content-type": content_type}))

    async def close(self) -> None:
        await self.http.aclose()
