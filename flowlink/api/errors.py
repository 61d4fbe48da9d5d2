"""One error shape for the whole API: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from flowlink.access.audit import record_denials
from flowlink.api.responses import SafeJSONResponse
from flowlink.errors import FlowlinkError, NotFound, TooManyRequests, Unauthorized


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    """A JSON error response in the API's shape."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return SafeJSONResponse(
        {"error": {"code": code, "message": message, "details": details or {}}},
        status_code=status,
        headers=headers,
    )


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


def install_error_handlers(app: FastAPI) -> None:
    """Map domain errors, validation errors and HTTP errors onto the error shape."""

    @app.exception_handler(FlowlinkError)
    async def _domain(request: Request, exc: FlowlinkError) -> JSONResponse:
        if isinstance(exc, NotFound) and is_public_path(request.url.path):
            return error_response(404, exc.code, PUBLIC_NOT_FOUND)
        denial = getattr(exc, "denial", None)
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
