"""Routes for events: emit, search (JSON or CloudEvents), the live stream, webhooks and keys."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import Field
from starlette.concurrency import run_in_threadpool

from flowlink import jsonsafe
from flowlink.access.policy import authorize, event_reader
from flowlink.api.bodies import MAX_ID, RequestBody
from flowlink.api.deps import Caller, Context, ServerContext
from flowlink.api.deps import request_http as _http
from flowlink.api.errors import error_response
from flowlink.api.executions import wait_for_end
from flowlink.api.responses import SafeJSONResponse as JSONResponse
from flowlink.automations import triggers, webhooks
from flowlink.errors import Invalid, Unauthorized
from flowlink.events import service as events
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import Execution
from flowlink.workspaces import service as workspaces

router = APIRouter(prefix="/api/v1/workspaces/{ws}", tags=["events"])
MAX_BATCH = 10_000
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
STREAM_BATCH = 200
KEEPALIVE_SECONDS = 15.0
LATE_COMMIT_WINDOW = 2.0  # PostgreSQL: seconds during which a lower seq may still commit
WEBHOOK_WAIT_SECONDS = 30.0
MAX_WEBHOOK_BODY = 1_000_000


class EventIn(RequestBody):
    type: str = Field(description="Event type, ^[A-Za-z0-9._-]{1,128}$")
    payload: Any = Field(None, description="Any JSON value, up to 100 kB")


class EmitBody(RequestBody):
    type: str | None = Field(None, description="Event type (one event)")
    payload: Any = Field(None, description="Payload of the one event")
    events: list[EventIn] | None = Field(
        None, min_length=1, max_length=MAX_BATCH, description="A batch of events, all or none"
    )
    correlationId: str | None = Field(
        None, max_length=64, description="Correlation id (a new one when omitted)"
    )


def _criteria(
    request: Request,
    types: str | None,
    text: str | None,
    after_date: str | None,
    before_date: str | None,
    correlation_id: str | None,
) -> events.EventFilter:
    matches = {
        key: value
        for key, value in request.query_params.items()
        if key.startswith(("source.", "payload."))
    }
    return events.parse_filter(
        types=types,
        text=text,
        after_date=after_date,
        before_date=before_date,
        correlation_id=correlation_id,
        matches=matches,
    )


@router.post("/events", status_code=201, response_model=None)
def emit_events(
    ws: str, body: EmitBody, request: Request, context: Context, caller: Caller
) -> JSONResponse:
    """Emit one custom event (``type``, ``payload``) or a batch (``events``); starts listeners."""
    if body.events is None and body.type is None:
        raise Invalid("send either type (one event) or events (a batch)", details={"field": "type"})
    if body.events is not None and body.type is not None:
        raise Invalid("send type or events, not both", details={"field": "events"})
    items = (
        [(e.type, e.payload) for e in body.events]
        if body.events is not None
        else [(str(body.type), body.payload)]
    )
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "create", "events", workspace)
        for event_type, _payload in items:
            authorize(caller, "create", "events", workspace, {"type": event_type})
        stored = triggers.emit_many(
            session,
            workspace,
            items,
            correlation_id=body.correlationId,
            user_id=caller.user_id,
            max_depth=context.settings.event_trigger_depth,
            source={"http": _http(request), "sessionId": getattr(caller, "session_id", None)},
        )
    if body.events is None:
        return JSONResponse(stored[0], status_code=201)
    return JSONResponse(
        {
            "count": len(stored),
            "correlationId": stored[0]["source"].get("correlationId") if stored else None,
            "items": [{"id": e["id"], "seq": e["seq"]} for e in stored],
        },
        status_code=201,
    )


@router.get("/events", response_model=None)
def search_events(
    ws: str,
    request: Request,
    context: Context,
    caller: Caller,
    types: Annotated[
        str | None, Query(description="Comma list; 'executions.*' for a prefix")
    ] = None,
    text: Annotated[str | None, Query(description="Full text over type and payload")] = None,
    after_date: Annotated[str | None, Query(alias="afterDate")] = None,
    before_date: Annotated[str | None, Query(alias="beforeDate")] = None,
    correlation_id: Annotated[str | None, Query(alias="correlationId")] = None,
    limit: Annotated[int, Query(ge=1, le=events.MAX_SEARCH_LIMIT)] = 50,
    cursor: Annotated[
        int | None, Query(ge=1, le=MAX_ID, description="next_cursor of the last page")
    ] = None,
) -> dict[str, Any] | JSONResponse:
    """Search events, newest first; also ``source.<field>=`` and ``payload.<path>=`` matches.

    With ``Accept: application/cloudevents-batch+json`` the page is a CloudEvents 1.0 batch.
    """
    criteria = _criteria(request, types, text, after_date, before_date, correlation_id)
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "events", workspace)
        found = events.search(session, workspace, criteria, limit=limit, before_seq=cursor)
        readable = event_reader(caller, workspace)
        views = [events.event_view(e) for e in found if readable(e.type)]
    next_cursor = found[-1].seq if len(found) == limit else None
    if CLOUDEVENTS_BATCH in request.headers.get("accept", ""):
        headers = {"X-Next-Cursor": str(next_cursor)} if next_cursor else None
        return JSONResponse(
            [events.cloudevent(v) for v in views], media_type=CLOUDEVENTS_BATCH, headers=headers
        )
    return {"items": views, "next_cursor": next_cursor}


# Streams in the same place (workspace, filter, position) share one read of the store: an
# event wakes a thousand streams, and they make one query, not a thousand. A read counts
# for a stream only if no event was announced since it began (the EVENTS counter), so a
# shared result is never older than the stream's wake-up.
_reads: dict[tuple[Any, ...], tuple[int, asyncio.Future[Any]]] = {}


async def _shared_read(
    key: tuple[Any, ...], store: Store, read: Callable[[], list[tuple[int, dict[str, Any]]]]
) -> list[tuple[int, dict[str, Any]]]:
    seen = store.notifier.counter(notify.EVENTS)
    current = _reads.get(key)
    if current is None or current[0] != seen:
        future: asyncio.Future[Any] = asyncio.ensure_future(run_in_threadpool(read))
        current = (seen, future)
        _reads[key] = current

        def forget(_done: asyncio.Future[Any], entry: Any = current) -> None:
            if _reads.get(key) is entry:
                del _reads[key]

        future.add_done_callback(forget)
    result: list[tuple[int, dict[str, Any]]] = await asyncio.shield(current[1])
    return result


def _sse(view: dict[str, Any], position: int) -> str:
    data = jsonsafe.dumps(view, separators=(",", ":"), default=str)
    return f"id: {position}\nevent: {view['type']}\ndata: {data}\n\n"


async def _stream(
    request: Request,
    context: ServerContext,
    workspace_id: str,
    criteria: events.EventFilter,
    start: int,
    readable: Callable[[str], bool] = lambda _type: True,
) -> AsyncIterator[str]:
    """Rows are always read from the store by seq; a notification only says "look again".

    The client's buffer is this generator: it reads the next rows only once the previous ones
    were sent, so a slow client lags behind (and can resume) without holding memory or
    slowing anyone else. On PostgreSQL a transaction can commit a lower seq after a higher
    one was read; rows inside a short window behind the cursor are re-checked and delivered
    once, with the stream position as their ``id``.
    """
    store = context.store
    late_commits = store.dialect == "postgresql"
    cursor = start  # highest seq delivered
    floor = start  # PostgreSQL: lowest seq that might still appear
    recent: dict[int, float] = {}  # seq -> when delivered, for seqs above floor

    def read(after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        with store.read() as session:
            rows = events.read_after(session, workspace_id, criteria, after, limit=limit)
            return [(e.seq, events.event_view(e)) for e in rows]

    last_sent = time.monotonic()
    with store.notifier.waiter({notify.EVENTS: {workspace_id}}) as waiter:
        yield "retry: 1000\n\n"
        look = True
        while True:
            if not look:  # nothing announced: sleep until a keep-alive is due
                if await request.is_disconnected() or context.stopping.is_set():
                    return
                # A client that went away is noticed when the keep-alive cannot be sent.
                idle = KEEPALIVE_SECONDS - (time.monotonic() - last_sent)
                look = bool(await waiter.wait(max(idle, 0.0)))
                if not look and time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    last_sent = time.monotonic()
                    yield ": keep-alive\n\n"
                continue
            after, limit = (floor if late_commits else cursor), STREAM_BATCH + len(recent)
            rows = await _shared_read(
                (store, workspace_id, criteria, after, limit),
                store,
                functools.partial(read, after, limit),
            )
            fresh = [(seq, view) for seq, view in rows if seq not in recent]
            now = time.monotonic()
            for seq, view in fresh:
                cursor = max(cursor, seq)
                if late_commits:
                    recent[seq] = now
                if readable(view["type"]):
                    yield _sse(view, cursor)
                last_sent = now
            if late_commits:
                settled = [s for s, at in recent.items() if now - at > LATE_COMMIT_WINDOW]
                if settled:
                    floor = max(floor, *settled)
                    recent = {s: at for s, at in recent.items() if s > floor}
                elif not recent:
                    floor = cursor
            if len(fresh) >= STREAM_BATCH:
                continue
            look = bool(recent)
            if recent:  # rows delivered lately may still be joined by late commits
                if await request.is_disconnected() or context.stopping.is_set():
                    return
                await waiter.wait(0.5)


@router.get("/events/stream")
async def stream_events(
    ws: str,
    request: Request,
    context: Context,
    caller: Caller,
    types: Annotated[str | None, Query()] = None,
    text: Annotated[str | None, Query()] = None,
    after_date: Annotated[str | None, Query(alias="afterDate")] = None,
    before_date: Annotated[str | None, Query(alias="beforeDate")] = None,
    correlation_id: Annotated[str | None, Query(alias="correlationId")] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_ID, description="Start after this seq")] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> StreamingResponse:
    """Server-Sent Events of the workspace (``id:`` = seq); resumes from ``Last-Event-ID``."""
    criteria = _criteria(request, types, text, after_date, before_date, correlation_id)
    start: int | None = after
    if last_event_id is not None and last_event_id.strip():
        try:
            start = int(last_event_id)
            if not 0 <= start <= MAX_ID:
                raise ValueError(start)
        except ValueError:
            raise Invalid(
                "Last-Event-ID must be an event seq (an integer)",
                details={"parameter": "Last-Event-ID"},
            ) from None

    def resolve() -> tuple[str, int, Callable[[str], bool]]:
        with context.store.read() as session:
            workspace = workspaces.get_workspace(session, ws)
            authorize(caller, "read", "events", workspace)
            first = start if start is not None else events.last_seq(session, workspace.id)
            return workspace.id, first, event_reader(caller, workspace)

    workspace_id, first, readable = await run_in_threadpool(resolve)
    return StreamingResponse(
        _stream(request, context, workspace_id, criteria, first, readable),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# --- webhooks ----------------------------------------------------------------------------------


async def webhook(
    ws: str,
    automation: str,
    request: Request,
    context: Context,
    async_: Annotated[bool, Query(alias="async", description="Answer at once with the id")] = False,
) -> JSONResponse:
    """Start the automation's flow with the request as inputs; answer with its output.

    Authenticated by the automation's key (``X-Flowlink-Key`` header or ``?key=``) unless the
    automation is ``public: true``.
    """
    raw = await request.body()
    if len(raw) > MAX_WEBHOOK_BODY:
        raise events.PayloadTooLarge(
            f"webhook body is {len(raw)} bytes; the limit is {MAX_WEBHOOK_BODY}",
            details={"field": "body", "size": len(raw), "limit": MAX_WEBHOOK_BODY},
        )
    body: Any = None
    if raw:
        text_body = jsonsafe.repair_text(raw.decode("utf-8", errors="replace"))
        body = text_body
        if "json" in request.headers.get("content-type", "") or text_body[:1] in "{[":
            try:
                body = json.loads(text_body)
            except ValueError:
                body = text_body
    query = {k: v for k, v in request.query_params.items() if k not in ("key", "async")}
    key = request.headers.get("x-flowlink-key") or request.query_params.get("key")
    http = _http(request)
    inputs = {
        "method": request.method,
        "path": request.url.path,
        "query": query,
        "headers": webhooks.filter_headers(request.headers),
        "body": body,
    }

    def start() -> str:
        rejected: Unauthorized | None = None
        with context.store.read() as session:
            workspace = workspaces.get_workspace(session, ws)
            found = webhooks.get_webhook(session, workspace, automation)
            try:
                webhooks.check_webhook_key(session, found, key)
            except Unauthorized as error:
                rejected = error
        if rejected is not None:
            reason = str(rejected.details.get("reason"))
            window = context.settings.rejection_window
            webhooks.note_webhook_rejected(context.store, window, ws, automation, reason, http)
            raise rejected
        with context.store.write() as session:
            workspace = workspaces.get_workspace(session, ws)
            found = webhooks.get_webhook(session, workspace, automation)
            execution = webhooks.start_webhook(
                session,
                workspace,
                found,
                inputs,
                http,
                correlation_id=webhooks.webhook_correlation_id(request.headers),
            )
            if execution is None:
                raise Invalid(
                    f"automation {automation!r} could not start its flow (see the error event)",
                    details={"automation": automation},
                )
            return execution.id

    execution_id = await run_in_threadpool(start)
    if async_:
        return JSONResponse({"id": execution_id, "status": "queued"}, status_code=202)
    await wait_for_end(context.store, execution_id, WEBHOOK_WAIT_SECONDS)

    def result() -> tuple[str, Any, str | None]:
        with context.store.read() as session:
            execution = session.get(Execution, execution_id)
            assert execution is not None
            return execution.status, execution.outputs, execution.message

    status, outputs, message = await run_in_threadpool(result)
    headers = {"X-Execution-Id": execution_id}
    if status == "success":
        return JSONResponse(outputs, headers=headers)
    if status in ("error", "cancelled"):
        return error_response(502, "execution_failed", message or status, headers=headers)
    return JSONResponse({"id": execution_id, "status": status}, status_code=202, headers=headers)


for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    router.add_api_route(
        "/webhooks/{automation}",
        webhook,
        methods=[_method],
        name=f"webhook_{_method.lower()}",
        operation_id=f"webhook_{_method.lower()}",
        response_model=None,
    )


@router.post("/automations/{automation}/webhook_key")
def rotate_webhook_key(
    ws: str, automation: str, context: Context, caller: Caller
) -> dict[str, Any]:
    """Create or replace an automation's webhook key; the key is shown only in this answer."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "manage", "automations", workspace)
        found = webhooks.get_webhook(session, workspace, automation)
        key = webhooks.rotate_webhook_key(session, found)
        return {
            "automation": automation,
            "key": key,
            "public": webhooks.is_public(found),
            "url": f"/api/v1/workspaces/{ws}/webhooks/{automation}",
        }
