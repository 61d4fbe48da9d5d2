"""Mounting the console on the API's FastAPI app."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles

from flowlink.api.errors import error_response
from flowlink.web import access, activity, automations, links, routes, workspace
from flowlink.web.render import highlight_css, render


def install(app: FastAPI) -> None:
    """Serve the console at ``/`` and its static files at ``/assets`` (the API keeps /api/v1)."""

    @app.get("/assets/highlight.css", include_in_schema=False)
    def _highlight() -> Response:
        return Response(
            highlight_css(),
            media_type="text/css",
            headers={"Cache-Control": "public, max-age=3600"},
        )

    app.include_router(routes.router)
    app.include_router(activity.router)
    app.include_router(workspace.router)
    app.include_router(automations.router)
    app.include_router(links.router)
    app.include_router(access.router)
    static = str(resources.files("flowlink.web") / "static")
    app.mount("/assets", StaticFiles(directory=static), name="assets")

    @app.get("/{path:path}", include_in_schema=False)
    def _not_found(request: Request, path: str) -> Response:
        # Registered last: only paths no API route or page matched end here.
        if path.startswith("api/"):
            return error_response(404, "not_found", "Not Found")
        return render(
            request, "error.html", {"status": 404, "message": f"no page at /{path}"}, status=404
        )
