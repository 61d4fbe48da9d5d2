"""Routes for events: emit, search (JSON or CloudEvents), the live stream, webhooks and keys."""

from __future__ import annotations

import json
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
from flowlink.api.errors import ErrorBody, error_response
from flowlink.api.responses import ApiRoute, EventStreamResponse
from flowlink.api.responses import SafeJSONResponse as JSONResponse
from flowlink.automations import triggers, webhooks
from flowlink.errors import Invalid, Unauthorized
from flowlink.events import live
from flowlink.events import service as events
from flowlink.events.views import (
    CLOUDEVENT_SCHEMA,
    EmittedBatch,
    EventPage,
    EventView,
    WebhookKeyView,
)
from flowlink.execution_status import ExecutionStatus, is_ended
from flowlink.executions import starts
from flowlink.executions.views import ExecutionAccepted
from flowlink.workspaces import service as workspaces

router = APIRouter(prefix="/api/v1/workspaces/{ws}", tags=["events"], route_class=ApiRoute)
MAX_BATCH = 10_000
CLOUDEVENTS_BATCH = "application/cloudevents-batch+json"
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


@router.post("/events", status_code=201, response_model=EventView | EmittedBatch)
def emit_events(
    ws: str, body: EmitBody, request: Request, context: Context, caller: Caller
) -> dict[str, Any]:
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
        return stored[0]
    return {
        "count": len(stored),
        "correlation_id": stored[0]["source"].get("correlationId") if stored else None,
        "items": [{"id": e["id"], "seq": e["seq"]} for e in stored],
    }


@router.get(
    "/events",
    response_model=EventPage,
    responses={
        200: {
            "description": "A page of events; with Accept: application/cloudevents-batch+json"
            " a CloudEvents 1.0 batch (next cursor in X-Next-Cursor)",
            "content": {CLOUDEVENTS_BATCH: {"schema": CLOUDEVENT_SCHEMA}},
        }
    },
)
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


@router.get(
    "/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: id = seq, event = type, data = the event",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        }
    },
)
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

    return live_response(request, context, workspace_id, criteria, first, readable)


def live_response(
    request: Request,
    context: ServerContext,
    workspace_id: str,
    criteria: events.EventFilter,
    first: int,
    readable: Callable[[str], bool],
    shape: Callable[[AsyncIterator[str]], AsyncIterator[str]] = lambda chunks: chunks,
) -> StreamingResponse:
    """The Server-Sent Events response of a workspace's live events after seq ``first``
    (the API's stream; the console's live tail gives ``shape`` to rename its messages).
    It ends when the client leaves or the server stops."""
    return EventStreamResponse(
        shape(
            live.stream(
                context.store,
                workspace_id,
                criteria,
                first,
                gone=request.is_disconnected,
                stopped=context.stopping.is_set,
                readable=readable,
            )
        ),
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
        accepted = ExecutionAccepted(id=execution_id, status=ExecutionStatus.QUEUED)
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)
    await starts.wait_for_end(context.store, execution_id, WEBHOOK_WAIT_SECONDS)
    status, outputs, message = await run_in_threadpool(starts.outcome, context.store, execution_id)
    headers = {"X-Execution-Id": execution_id}
    if status == ExecutionStatus.SUCCESS:
        return JSONResponse(outputs, headers=headers)
    if is_ended(status):
        return error_response(502, "execution_failed", message or status, headers=headers)
    accepted = ExecutionAccepted(id=execution_id, status=status)
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)


for _method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
    router.add_api_route(
        "/webhooks/{automation}",
        webhook,
        methods=[_method],
        name=f"webhook_{_method.lower()}",
        operation_id=f"webhook_{_method.lower()}",
        response_model=None,
        responses={
            200: {
                "description": "The flow's outputs, as the flow returned them (free-form)",
                "content": {"application/json": {"schema": {"description": "any JSON value"}}},
            },
            202: {"model": ExecutionAccepted, "description": "Started and not ended yet"},
            502: {"model": ErrorBody, "description": "The flow failed or was cancelled"},
        },
    )


@router.post("/automations/{automation}/webhook_key", response_model=WebhookKeyView)
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
