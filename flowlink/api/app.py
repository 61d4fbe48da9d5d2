"""The ASGI application."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI

from flowlink import __version__
from flowlink.api import (
    access,
    apps,
    events,
    executions,
    files,
    linking,
    operations,
    pages,
    system,
    workspaces,
)
from flowlink.api.deps import ServerContext
from flowlink.api.errors import ERROR_RESPONSES, error_schemas, install_error_handlers
from flowlink.api.guard import BodyGuard
from flowlink.api.responses import SafeJSONResponse
from flowlink.observability.http import HttpMetrics
from flowlink.observability.tracing import TracingMiddleware


def _document_errors(app: FastAPI) -> None:
    """Add the error body's schemas, which every operation references, to the document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            document.setdefault("components", {}).setdefault("schemas", {}).update(error_schemas())
        return app.openapi_schema or build()

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(
    context: ServerContext, extensions: Sequence[Callable[[FastAPI], None]] = ()
) -> FastAPI:
    """Build the API application around a server context.

    ``extensions`` add routes built on the API (the console, ``flowlink.web.app.install``).
    """
    app = FastAPI(
        title="flowlink",
        version=__version__,
        description="Self-hosted automation engine: flows, executions, events, linked workspaces.",
        openapi_url="/openapi.json",
        default_response_class=SafeJSONResponse,
        # flowlink traces with its own provider (TracingMiddleware) and counts with its own
        # metrics: FastAPI's would look for global OpenTelemetry providers on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.context = context
    # innermost: link exchanges skip the router, inside CatchAll and every other middleware
    app.add_middleware(linking.SyncEndpoint)
    install_error_handlers(app)
    app.add_middleware(BodyGuard, settings=context.settings, store=context.store)
    app.include_router(system.router, responses=ERROR_RESPONSES)
    app.include_router(workspaces.router, responses=ERROR_RESPONSES)
    app.include_router(executions.router, responses=ERROR_RESPONSES)
    app.include_router(events.router, responses=ERROR_RESPONSES)
    app.include_router(access.router, responses=ERROR_RESPONSES)
    app.include_router(linking.router, responses=ERROR_RESPONSES)
    app.include_router(operations.router, responses=ERROR_RESPONSES)
    app.add_middleware(HttpMetrics)
    app.add_middleware(TracingMiddleware)
    app.include_router(files.router, responses=ERROR_RESPONSES)
    app.include_router(pages.router, responses=ERROR_RESPONSES)
    app.include_router(apps.router, responses=ERROR_RESPONSES)
    for extend in extensions:
        extend(app)
    _document_errors(app)
    # outermost of these: a custom domain serves pages only, never the API or the console
    app.add_middleware(pages.CustomDomains, lookup=pages.domain_lookup(context))
    return app
