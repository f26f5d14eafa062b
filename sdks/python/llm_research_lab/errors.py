"""Exceptions for the API's error responses; each carries the error body as the API sent it."""

from __future__ import annotations

from typing import Any


class LLMResearchError(Exception):
    """Base of every error this client raises."""


class APIError(LLMResearchError):
    """An error response: `status`, `error` (e.g. "validation_error"), `message`, `request_id`, the whole `body`."""

    def __init__(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body: dict[str, Any] = body or {}
        self.headers = headers or {}
        self.error: str = str(self.body.get("error") or "")
        self.message: str = str(self.body.get("message") or f"HTTP {status}")
        self.request_id: str | None = self.body.get("request_id")
        self.details: dict[str, Any] | None = self.body.get("details")
        where = f" ({self.request_id})" if self.request_id else ""
        super().__init__(f"{status} {self.error}: {self.message}{where}")

    @property
    def fields(self) -> dict[str, str]:
        """details.fields of a validation error: field name -> problem."""
        return dict((self.details or {}).get("fields") or {})


class ValidationError(APIError):
    """400 validation_error."""


class AuthenticationError(APIError):
    """401 unauthorized."""


class PermissionDeniedError(APIError):
    """403 forbidden; `required_permission` names what is missing."""

    @property
    def required_permission(self) -> str | None:
        return self.body.get("required_permission")


class NotFoundError(APIError):
    """404 not_found."""


class ConflictError(APIError):
    """409 conflict; `existing_id` names the object already there."""

    @property
    def existing_id(self) -> str | None:
        return self.body.get("existing_id")


class UnprocessableEntityError(APIError):
    """422 unprocessable_entity: well formed, but it cannot be done (e.g. starting an experiment with no dataset)."""


class RateLimitError(APIError):
    """429 rate_limit_exceeded after the client's retries; `retry_after` in seconds."""

    @property
    def retry_after(self) -> float | None:
        v = self.body.get("retry_after", self.headers.get("retry-after"))
        return float(v) if v is not None else None


class ServerError(APIError):
    """5xx."""


class RunFailedError(LLMResearchError):
    """wait_for_completion: the run ended `failed`; `run` is its final state."""

    def __init__(self, run: Any) -> None:
        self.run = run
        super().__init__(f"run {run.id} failed: {run.error}")


class WaitTimeoutError(LLMResearchError, TimeoutError):
    """wait_for_completion: the run had not ended within the timeout."""


_BY_STATUS = {400: ValidationError, 401: AuthenticationError, 403: PermissionDeniedError, 404: NotFoundError,
              409: ConflictError, 422: UnprocessableEntityError, 429: RateLimitError}


def error_for(status: int, body: Any, headers: dict[str, str]) -> APIError:
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(status, body if isinstance(body, dict) else {"message": str(body)[:500]}, headers)
