"""The API's JSON response: stored data that is not fit for JSON never makes it fail."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from flowlink.jsonsafe import repair


class SafeJSONResponse(JSONResponse):
    """``JSONResponse`` that repairs what it cannot encode instead of answering 500.

    New input is refused at the boundaries, but a row stored before (a lone surrogate, a
    NaN) must not make every list that contains it fail: such strings are served with
    U+FFFD and such numbers as ``null``.
    """

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except (ValueError, UnicodeEncodeError):
            return super().render(repair(content))


class ApiRoute(APIRoute):
    """A route of the API: its response model sends the fields the answer has.

    A field a view leaves out where it does not apply (a token's secret outside the answer
    that created it, an execution's ``script`` in a list) stays out instead of being sent
    as ``null``; the model still drops every field it does not declare.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["response_model_exclude_unset"] = True
        super().__init__(path, endpoint, **kwargs)


# The server's own ``send`` of a request (uvicorn's), below every middleware; set by
# ``DirectSends``.
DIRECT_SEND = "flowlink.direct_send"


class DirectSends:
    """The outermost ASGI layer of the server: notes the server's own ``send`` in the
    request's scope (``DIRECT_SEND``) for ``EventStreamResponse``.

    The middleware between them (errors, metrics, tracing, the body guard) look at an
    answer's start (its status and headers), never at its body; a middleware that changes
    bodies (compression) would have to be left out of that path.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[DIRECT_SEND] = send
        await self.app(scope, receive, send)


class EventStreamResponse(StreamingResponse):
    """A stream of Server-Sent Events whose body chunks skip the middleware.

    The answer's start (status, headers) goes through every middleware like any answer's;
    the chunks that follow, a write to each of a thousand open streams per event, go
    straight to the server's ``send`` when ``DirectSends`` put it in the scope. An error
    while writing is raised through the same calls as before, so the middleware see it.
    """

    direct: Send | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.direct = scope.get(DIRECT_SEND)
        await super().__call__(scope, receive, send)

    async def stream_response(self, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        write = self.direct or send
        async for chunk in self.body_iterator:
            body = chunk if isinstance(chunk, bytes | memoryview) else chunk.encode(self.charset)
            await write({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
