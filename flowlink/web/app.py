"""Mounting the console on the API's FastAPI app."""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

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

    # Unknown paths outside /api/ get an HTML page; the API keeps its JSON errors. A handler
    # rather than a catch-all route, so routes added after this one still match.
    api_handler = app.exception_handlers[StarletteHTTPException]

    async def _not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        if status == 404 and not request.url.path.startswith("/api/"):
            return render(
                request,
                "error.html",
                {"status": 404, "message": f"no page at {request.url.path}"},
                status=404,
            )
        answer: Response = await api_handler(request, exc)  # type: ignore[misc]
        return answer

    app.add_exception_handler(StarletteHTTPException, _not_found)
