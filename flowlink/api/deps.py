"""Shared FastAPI dependencies: the server context and the authenticated principal."""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from flowlink.access.service import (
    LoginThrottle,
    Principal,
    authenticate_session,
    authenticate_token,
    csrf_token_for,
)
from flowlink.errors import Forbidden, Unauthorized
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store

SESSION_COOKIE = "flowlink_session"
CSRF_COOKIE = "flowlink_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass
class ServerContext:
    """What every request handler may use: the store, the settings, the login throttle."""

    store: Store
    settings: ServerSettings
    login_throttle: LoginThrottle = field(default_factory=LoginThrottle)
    # Set when the server shuts down: long polls answer at once instead of holding it up.
    stopping: threading.Event = field(default_factory=threading.Event)


async def get_context(request: Request) -> ServerContext:
    """The server context of the running app (on the event loop: no thread hop)."""
    context: ServerContext = request.app.state.context
    return context


def authenticated(
    request: Request, context: Annotated[ServerContext, Depends(get_context)]
) -> Principal:
    """Authenticate the request; the one place that does.

    ``Authorization: Bearer <API token>`` for programs, or the session cookie set by
    ``POST /api/v1/auth/login``; a cookie-authenticated unsafe request must also send the
    session's CSRF token in ``X-CSRF-Token`` (it equals the ``flowlink_csrf`` cookie).
    """
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, secret = header.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("malformed credentials: send 'Authorization: Bearer <API token>'")
        with context.store.read() as session:
            return authenticate_token(session, secret.strip())
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise Unauthorized(
            "missing credentials: send 'Authorization: Bearer <API token>' or log in"
        )
    with context.store.read() as session:
        principal = authenticate_session(session, cookie)
    if request.method not in SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER, "")
        expected = csrf_token_for(cookie)
        if not sent or not hmac.compare_digest(sent, expected):
            raise Forbidden(
                f"missing or wrong CSRF token: send the {CSRF_COOKIE} cookie's value"
                f" in {CSRF_HEADER}"
            )
    return principal


def request_http(request: Request) -> dict[str, Any]:
    """The ``source.http`` of events a request causes: method, path and client address."""
    return {
        "method": request.method,
        "path": request.url.path,
        "ip": request.client.host if request.client else None,
    }


Context = Annotated[ServerContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]
