"""Domain errors shared by every layer; the API maps them onto HTTP status codes."""

from __future__ import annotations

from typing import Any


class FlowlinkError(Exception):
    """Base of all domain errors: a stable code, a message and optional details."""

    code = "error"
    status = 400

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class NotFound(FlowlinkError):
    """The resource does not exist (or the caller may not know it exists)."""

    code = "not_found"
    status = 404


class Conflict(FlowlinkError):
    """The request clashes with the current state (a duplicate name, an ended execution...)."""

    code = "conflict"
    status = 409


class Invalid(FlowlinkError):
    """Input that fails validation; ``details`` name the field, file or line."""

    code = "invalid"
    status = 422


class Unauthorized(FlowlinkError):
    """No valid credentials."""

    code = "unauthorized"
    status = 401


class Forbidden(FlowlinkError):
    """Valid credentials, but not allowed to do this."""

    code = "forbidden"
    status = 403


class TooManyRequests(FlowlinkError):
    """Too many attempts (failed logins); ``retry_after`` seconds until the next may succeed."""

    code = "too_many_requests"
    status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retry_after": retry_after})
        self.retry_after = retry_after
