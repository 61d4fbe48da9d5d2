"""The live parts of execution pages: new log lines and status changes as Server-Sent Events.

The lines are read from the store by id (``executions.get_logs``), so a reconnecting browser
resumes after the last line it got (``Last-Event-ID``); waiting is an ``asyncio`` sleep, so an
open page holds no thread.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from flowlink.executions import service as executions
from flowlink.store.engine import Store
from flowlink.store.models import Execution

FIRST_LINES = 1000  # lines rendered into the page; the stream sends the rest
BATCH = 500
TICK_SECONDS = 0.05  # runners flush their log lines every 0.1 s
KEEPALIVE_SECONDS = 15.0


def _event(name: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {name}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _read(
    store: Store, execution_id: str, after: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with store.read() as session:
        lines = executions.log_lines(session, execution_id, after=after, limit=BATCH)
        execution = session.get(Execution, execution_id)
        state: dict[str, Any] = {"status": "gone"}
        if execution is not None:
            view = executions.execution_view(execution, "")
            state = {
                key: view[key]
                for key in ("status", "message", "started_at", "ended_at", "duration")
            }
            state["output_value"] = view["output_value"]
        return lines, state


async def _follow(
    request: Request, store: Store, execution_id: str, after: int
) -> AsyncIterator[str]:
    cursor = after
    last_state: dict[str, Any] | None = None
    last_sent = time.monotonic()
    yield "retry: 1000\n\n"
    while True:
        lines, state = await run_in_threadpool(_read, store, execution_id, cursor)
        if lines:
            cursor = lines[-1]["id"]
            yield _event("logs", lines, cursor)
            last_sent = time.monotonic()
        if state != last_state:
            last_state = state
            yield _event("status", state)
            last_sent = time.monotonic()
        if len(lines) == BATCH:
            continue
        if state["status"] in (*executions.ENDED, "gone"):
            yield _event("end", {"status": state["status"]})
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(TICK_SECONDS)
        if time.monotonic() - last_sent > KEEPALIVE_SECONDS:
            last_sent = time.monotonic()
            yield ": keep-alive\n\n"


def execution_stream(
    request: Request, store: Store, execution_id: str, after: int
) -> StreamingResponse:
    """The SSE response following one execution (resumes from ``Last-Event-ID``)."""
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit():
        after = int(resume)
    return StreamingResponse(
        _follow(request, store, execution_id, max(after, 0)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
