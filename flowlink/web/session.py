"""Who is looking at a console page: the login session cookie, CSRF checks, error pages."""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Coroutine, Mapping
from typing import Any
from urllib.parse import quote

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from flowlink.access.audit import record_denials
from flowlink.access.policy import denial_of
from flowlink.access.service import Principal, authenticate_session, csrf_token_for
from flowlink.api.deps import SESSION_COOKIE, ServerContext
from flowlink.errors import FlowlinkError, Forbidden, Unauthorized
from flowlink.web.render import render

LOGIN_CSRF_COOKIE = "flowlink_login_csrf"
CSRF_FIELD = "csrf_token"


class LoginRequired(Exception):
    """No valid session: the page answers with a redirect to the login page."""


def context_of(request: Request) -> ServerContext:
    """The server context of the running app."""
    context: ServerContext = request.app.state.context
    return context


def current_user(request: Request) -> Principal:
    """The principal of the session cookie; LoginRequired when it is missing, ended or forged."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise LoginRequired()
    with context_of(request).store.read() as session:
        try:
            return authenticate_session(session, cookie)
        except Unauthorized:
            raise LoginRequired() from None


def csrf_of(request: Request) -> str:
    """The CSRF token of the request's session (to put in forms)."""
    return csrf_token_for(request.cookies.get(SESSION_COOKIE, ""))


def check_csrf(request: Request, form: Mapping[str, Any]) -> None:
    """403 unless the form carries the session's CSRF token."""
    sent = form.get(CSRF_FIELD)
    cookie = request.cookies.get(SESSION_COOKIE, "")
    if not isinstance(sent, str) or not sent or not cookie:
        raise Forbidden("missing CSRF token: reload the page and submit the form again")
    if not hmac.compare_digest(sent, csrf_token_for(cookie)):
        raise Forbidden("wrong CSRF token: reload the page and submit the form again")


def new_login_csrf() -> str:
    """A random token for the login form (double-submitted as a cookie; no session yet)."""
    return secrets.token_urlsafe(24)


def check_login_csrf(request: Request, form: Mapping[str, Any]) -> None:
    """403 unless the login form's token equals its cookie."""
    sent = form.get(CSRF_FIELD)
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not isinstance(sent, str) or not cookie or not hmac.compare_digest(sent, cookie):
        raise Forbidden("missing or wrong CSRF token: reload the login page and try again")


def _http(request: Request) -> dict[str, Any]:
    return {
        "method": request.method,
        "path": request.url.path,
        "ip": request.client.host if request.client else None,
    }


async def error_page(request: Request, error: Exception) -> Response:
    """The HTML answer for an error raised by a page: a redirect to log in, or an error page."""
    if isinstance(error, LoginRequired):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/"
        response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
    if isinstance(error, RequestValidationError):
        messages = [
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', 'invalid')}"
            for e in error.errors()
        ]
        return render(
            request, "error.html", {"status": 422, "message": "; ".join(messages)}, status=422
        )
    assert isinstance(error, FlowlinkError)
    denial = denial_of(error)
    if denial is not None:
        await run_in_threadpool(record_denials, context_of(request).store, [denial], _http(request))
    return render(
        request,
        "error.html",
        {"status": error.status, "message": error.message},
        status=error.status,
    )


class WebRoute(APIRoute):
    """A console route: domain errors become HTML pages (or the login redirect), never JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except (LoginRequired, FlowlinkError, RequestValidationError) as error:
                return await error_page(request, error)

        return handle
