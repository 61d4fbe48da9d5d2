"""HTTP request metrics as ASGI middleware: count and latency by method, route and status."""

from __future__ import annotations

import time
from typing import Any

from flowlink.observability import metrics

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StatusNoted:
    """An ASGI ``send`` that notes the response status on its way (500 until one is sent)."""

    def __init__(self, send: Any) -> None:
        self.send = send
        self.status = 500

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = int(message["status"])
        await self.send(message)


class HttpMetrics:
    """Counts every answered request under its route template (``/workspaces/{ws}/...``).

    A pure ASGI middleware, so streamed answers (event streams, long polls) pass through
    untouched; they are counted when they end. Unknown paths count as ``unmatched`` and unknown
    methods as ``OTHER``, so a scanner cannot create new series.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        noted = StatusNoted(send)
        try:
            await self.app(scope, receive, noted)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            metrics.http_request(method, route, noted.status, time.perf_counter() - began)
