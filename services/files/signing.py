"""Signed, expiring URLs for uploads and downloads: HMAC-SHA256 over what the URL grants, checked in constant time.

A URL is `<base>/uploads/<token>?expires=<unix>&signature=<hex>` or
`<base>/downloads/<token>/<filename>?expires=<unix>&signature=<hex>` (transfers_service.proto). The signature
covers the method, the token, the filename and the expiry, so changing any of them (a longer expiry, another
token) makes it fail. Nothing else authorises these routes: the gateway lets them through without a credential.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import urllib.parse
from dataclasses import dataclass

from llmlab.runtime import PermissionDenied, Unauthenticated


def new_token() -> str:
    """An opaque, unguessable slot or object id (128 bits)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Signer:
    """Signs and verifies transfer URLs with one key."""

    key: bytes

    def signature(self, method: str, token: str, filename: str, expires: int) -> str:
        message = f"{method.upper()}\n{token}\n{filename}\n{expires}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def verify(self, method: str, token: str, filename: str, expires: int, signature: str,
               now: float | None = None) -> None:
        """PermissionDenied (403) for a signature that does not match; Unauthenticated (401) once expired.

        The signature is checked first: an expiry only means something once it is known to be the one signed.
        """
        expected = self.signature(method, token, filename, expires)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode("ascii", "replace")):
            raise PermissionDenied("The URL's signature is invalid", reason="FORBIDDEN")
        if (time.time() if now is None else now) >= expires:
            raise Unauthenticated("The signed URL has expired; ask for a new one", reason="UNAUTHORIZED")

    def upload_url(self, base: str, token: str, expires: int) -> str:
        query = urllib.parse.urlencode({"expires": expires, "signature": self.signature("PUT", token, "", expires)})
        return f"{base.rstrip('/')}/uploads/{token}?{query}"

    def download_url(self, base: str, token: str, filename: str, expires: int) -> str:
        query = urllib.parse.urlencode(
            {"expires": expires, "signature": self.signature("GET", token, filename, expires)}
        )
        return f"{base.rstrip('/')}/downloads/{token}/{urllib.parse.quote(filename)}?{query}"
