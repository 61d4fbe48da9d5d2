"""``EventStreamResponse``: an event stream's body chunks skip the middleware, its start and
its end do not (``DirectSends``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowlink.api.responses import DirectSends, EventStreamResponse


async def chunks() -> AsyncIterator[str]:
    for n in range(3):
        yield f"data: {n}\n\n"


def run(direct: bool) -> tuple[list[str], list[dict[str, Any]]]:
    """The message types a middleware saw, and what reached the server's ``send``."""
    seen: list[str] = []
    sent: list[dict[str, Any]] = []

    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        await EventStreamResponse(chunks(), media_type="text/event-stream")(scope, receive, send)

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        async def noting(message: dict[str, Any]) -> None:
            seen.append(message["type"] + (" more" if message.get("more_body") else ""))
            await send(message)

        await endpoint(scope, receive, noting)

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(10)
        return {"type": "http.disconnect"}

    async def server_send(message: dict[str, Any]) -> None:
        sent.append(message)

    app = DirectSends(middleware) if direct else middleware
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [],
        "asgi": {"spec_version": "2.4"},
    }
    asyncio.run(app(scope, receive, server_send))
    return seen, sent


@pytest.mark.parametrize("direct", [True, False])
def test_body_chunks_skip_the_middleware_only_under_direct_sends(direct: bool) -> None:
    seen, sent = run(direct)
    assert [m["type"] for m in sent] == ["http.response.start"] + ["http.response.body"] * 4
    assert [m["body"] for m in sent[1:]] == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]
    assert dict(sent[0]["headers"])[b"content-type"].startswith(b"text/event-stream")
    chunks_seen = ["http.response.body more"] * (0 if direct else 3)
    assert seen == ["http.response.start", *chunks_seen, "http.response.body"]
