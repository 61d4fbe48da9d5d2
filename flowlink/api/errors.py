"""One error shape for the whole API: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowlink.access.audit import record_denials
from flowlink.access.policy import denial_of
from flowlink.api.responses import SafeJSONResponse
from flowlink.errors import FlowlinkError, NotFound, TooManyRequests, Unauthorized
from flowlink.views import View

log = logging.getLogger(__name__)


class ErrorDetail(View):
    """What went wrong: a stable code, a message naming the field, and details."""

    code: str = Field(description="e.g. invalid, not_found, forbidden, internal")
    message: str
    details: dict[str, Any] = Field(description="e.g. field, errors, error_id (free-form)")


class ErrorBody(View):
    """Every error answer of the API."""

    error: ErrorDetail


ERROR_REF = "#/components/schemas/ErrorBody"


def _error(description: str) -> dict[str, Any]:
    # A reference, not a model: a model per route and status would cost a schema build each.
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
    }


def error_schemas() -> dict[str, Any]:
    """The OpenAPI component schemas of the error body (``ErrorBody``, ``ErrorDetail``)."""
    schema = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    definitions: dict[str, Any] = schema.pop("$defs", {})
    return {**definitions, "ErrorBody": schema}


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: _error("Not authenticated"),
    403: _error("Not allowed (or missing CSRF token)"),
    404: _error("Not found"),
    409: _error("Conflicts with the current state"),
    413: _error("Too large"),
    422: _error("Invalid input: details.errors names each field"),
    429: _error("Too many requests (see Retry-After)"),
    500: _error("Unexpected error: details.error_id matches the server log"),
}
"""The documented error statuses of every API operation, all in the ``ErrorBody`` shape."""


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> SafeJSONResponse:
    """A JSON error response in the API's shape; every error the API sends is built here."""
    merged = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    merged.update(headers or {})
    # Built, not validated: an error answer must not itself fail on an odd detail.
    detail = ErrorDetail.model_construct(code=code, message=message, details=details or {})
    body = ErrorBody.model_construct(error=detail)
    return SafeJSONResponse(
        body.model_dump(warnings=False),
        status_code=status,
        headers=merged or None,
    )


def unexpected_error_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """A 500 for an error nobody expected: an error id in the answer, the traceback in the log.

    The client gets the id only (never the exception's text, which may hold internals); the
    server log line carries the same id and the traceback, so the two can be matched.
    """
    error_id = "err_" + secrets.token_hex(8)
    log.error(
        "unexpected error %s on %s %s: %s",
        error_id,
        method,
        path,
        type(exc).__name__,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return error_response(
        500,
        "internal",
        f"an unexpected error occurred on the server (error id {error_id})",
        {"error_id": error_id},
        {"X-Error-Id": error_id},
    )


class CatchAll:
    """ASGI middleware turning an unexpected exception into the JSON 500 of
    ``unexpected_error_response``.

    Installed inside the metrics and tracing middleware, so they see the 500 rather than an
    exception. If the answer had already started (a stream), only the log line is written and
    the exception goes on, since the server must then cut the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def noting(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, noting)
        except Exception as exc:
            response = unexpected_error_response(scope["method"], scope["path"], exc)
            if started:
                raise
            await response(scope, receive, send)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location]
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:] or parts
    return ".".join(parts)


def is_sync_path(path: str) -> bool:
    """``/api/v1/workspaces/{ws}/sync_config/{name}/sync``: a link's endpoint."""
    return path.endswith("/sync") and "/sync_config/" in path


def is_webhook_path(path: str) -> bool:
    """``/api/v1/workspaces/{ws}/webhooks/{automation}``."""
    return "/webhooks/" in path


def is_public_path(path: str) -> bool:
    """A route that needs no login: a webhook or a link's sync endpoint."""
    return is_webhook_path(path) or is_sync_path(path)


# One answer for an unknown workspace, automation or sync config on a route without login,
# so that it cannot be used to find out which workspaces or automations exist.
PUBLIC_NOT_FOUND = "nothing to call at this address"


async def domain_error_response(request: Request, exc: FlowlinkError) -> JSONResponse:
    """The answer to a domain error (``FlowlinkError``) raised by a route; a denial is
    recorded first (in a thread: it writes)."""
    if isinstance(exc, NotFound) and is_public_path(request.url.path):
        return error_response(404, exc.code, PUBLIC_NOT_FOUND)
    denial = denial_of(exc)
    if denial is not None:
        http = {
            "method": request.method,
            "path": request.url.path,
            "ip": request.client.host if request.client else None,
        }
        store = request.app.state.context.store
        await run_in_threadpool(record_denials, store, [denial], http)
    response = error_response(exc.status, exc.code, exc.message, exc.details)
    if isinstance(exc, TooManyRequests):
        response.headers["Retry-After"] = str(exc.retry_after)
    return response


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors, HTTP errors and any other exception onto the
    error shape (call before adding other middleware, so ``CatchAll`` sits inside them all;
    only a route served in front of the router, ``SyncEndpoint``, is added before it)."""
    app.add_middleware(CatchAll)

    @app.exception_handler(FlowlinkError)
    async def _domain(request: Request, exc: FlowlinkError) -> JSONResponse:
        return await domain_error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": _field_name(tuple(e.get("loc", ()))), "message": e.get("msg", "invalid")}
            for e in exc.errors()
        ]
        message = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return error_response(422, "invalid", message, {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {401: Unauthorized.code, 404: "not_found", 405: "method_not_allowed"}.get(
            exc.status_code, "error"
        )
        return error_response(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Only errors raised in the outer middleware reach this (CatchAll handles the rest).
        return unexpected_error_response(request.method, request.url.path, exc)
