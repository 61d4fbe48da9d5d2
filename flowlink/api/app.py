"""The ASGI application."""

from __future__ import annotations

from fastapi import FastAPI

from flowlink import __version__
from flowlink.api import (
    access,
    apps,
    events,
    executions,
    linking,
    pages,
    system,
    workspaces,
)
from flowlink.api.deps import ServerContext
from flowlink.api.errors import install_error_handlers


def create_app(context: ServerContext) -> FastAPI:
    """Build the API application around a server context."""
    app = FastAPI(
        title="flowlink",
        version=__version__,
        description="Self-hosted automation engine: flows, executions, events, linked workspaces.",
        openapi_url="/openapi.json",
    )
    app.state.context = context
    install_error_handlers(app)
    app.include_router(system.router)
    app.include_router(workspaces.router)
    app.include_router(executions.router)
    app.include_router(events.router)
    app.include_router(access.router)
    app.include_router(linking.router)
    app.include_router(pages.router)
    app.include_router(apps.router)
    app.add_middleware(pages.CustomDomains, lookup=pages.domain_lookup(context))
    return app
