"""The activity view: event search with every filter of the API, a histogram, a live tail,
correlation chains across workspaces and links, and the search as CloudEvents JSON."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flowlink.access.policy import allows, authorize, event_reader, visible
from flowlink.access.service import Principal
from flowlink.api.events import live_response
from flowlink.errors import Invalid
from flowlink.events import service as events
from flowlink.executions import service as executions
from flowlink.linking import exchange
from flowlink.store.models import utcnow
from flowlink.web.render import histogram, render
from flowlink.web.routes import Viewer, viewer, workspace_for
from flowlink.web.session import WebRoute, context_of
from flowlink.workspaces import service as workspaces

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)
PAGE_SIZE = 100
FILTERS = ("types", "text", "afterDate", "beforeDate", "correlationId")
MAX_DOWNLOAD = events.MAX_SEARCH_LIMIT


def _params(request: Request) -> dict[str, str]:
    """The filter parameters as given (the form's one ``match`` field becomes a match)."""
    params = {k: v for k, v in request.query_params.items() if k in FILTERS and v}
    for key, value in request.query_params.items():
        if key.startswith(("source.", "payload.")):
            params[key] = value
    match = request.query_params.get("match", "").strip()
    if match:
        key, sep, value = match.partition("=")
        if not sep:
            raise Invalid(
                "match: write source.<field>=<value> or payload.<path>=<value>",
                details={"parameter": "match"},
            )
        params[key.strip()] = value.strip()
    return params


def _criteria(params: dict[str, str]) -> events.EventFilter:
    return events.parse_filter(
        types=params.get("types"),
        text=params.get("text"),
        after_date=params.get("afterDate"),
        before_date=params.get("beforeDate"),
        correlation_id=params.get("correlationId"),
        matches={k: v for k, v in params.items() if k.startswith(("source.", "payload."))},
    )


def _chain(user: Principal, session: Any, correlation_id: str) -> list[dict[str, Any]]:
    """Runs with this correlation id in every workspace the user sees, with their links."""
    shown = {w.id: w for w in workspaces.list_workspaces(session) if visible(user, w)}
    chain = []
    for execution in executions.by_correlation(session, correlation_id, list(shown)):
        workspace = shown[execution.workspace_id]
        if not allows(user, "read", "executions", workspace, {"flow": execution.flow_name}):
            continue
        view = executions.execution_view(execution, workspace.slug)
        view["link"] = exchange.role_of_link(session, execution)
        chain.append(view)
    return chain


@router.get("/w/{ws}/activity")
def activity_page(request: Request, ws: str, user: Viewer, cursor: str = "") -> Response:
    """Search events (newest first) with a histogram; the live tail adds new ones on top."""
    error = ""
    items: list[dict[str, Any]] = []
    chart = None
    chain: list[dict[str, Any]] = []
    next_url = None
    raw = {k: request.query_params.get(k, "") for k in (*FILTERS, "match")}
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "events")
        try:
            params = _params(request)
            criteria = _criteria(params)
            if cursor and not cursor.isdigit():
                raise Invalid("cursor must be a number", details={"parameter": "cursor"})
            found = events.search(
                session, workspace, criteria, limit=PAGE_SIZE, before_seq=int(cursor or 0) or None
            )
            readable = event_reader(user, workspace)
            items = [events.event_view(e) for e in found if readable(e.type)]
            if len(found) == PAGE_SIZE:
                next_url = "?" + urlencode({**params, "cursor": found[-1].seq})
            times = events.recent_times(session, workspace, criteria)
            if times:
                end = criteria.before or utcnow()
                start = criteria.after or min(times[-1], end)
                chart = histogram(times, start, end)
            if criteria.correlation_id:
                chain = _chain(user, session, criteria.correlation_id)
        except Invalid as failure:
            error, params = failure.message, {}
    stream = f"/w/{ws}/activity/live" + ("?" + urlencode(params) if params else "")
    download = f"/w/{ws}/activity/cloudevents.json" + ("?" + urlencode(params) if params else "")
    return render(
        request,
        "activity.html",
        {
            "ws": ws,
            "nav": "activity",
            "items": items,
            "raw": raw,
            "error": error,
            "chart": chart,
            "chain": chain,
            "next_url": next_url,
            "stream": stream,
            "download": download,
            "first_page": not cursor,
        },
        status=422 if error else 200,
    )


@router.get("/w/{ws}/activity/cloudevents.json")
def activity_download(request: Request, ws: str, user: Viewer) -> Response:
    """The current search (up to 1,000 events) as a CloudEvents 1.0 JSON batch file."""
    criteria = _criteria(_params(request))
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "events")
        found = events.search(session, workspace, criteria, limit=MAX_DOWNLOAD)
        readable = event_reader(user, workspace)
        batch = [events.cloudevent(events.event_view(e)) for e in found if readable(e.type)]
    return Response(
        json.dumps(batch, default=str, indent=1),
        media_type="application/cloudevents-batch+json",
        headers={"Content-Disposition": f'attachment; filename="{ws}-events.json"'},
    )


async def _unnamed(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    """The events stream with its ``event:`` names dropped: the page listens to ``message``."""
    async for chunk in chunks:
        yield "\n".join(line for line in chunk.split("\n") if not line.startswith("event: "))


@router.get("/w/{ws}/activity/live")
async def activity_live(request: Request, ws: str) -> Response:
    """The live tail: the API's event stream for the same filters, from now on."""
    user = await run_in_threadpool(viewer, request)
    criteria = _criteria(_params(request))
    context = context_of(request)

    def resolve() -> tuple[str, int, Any]:
        with context.store.read() as session:
            workspace = workspaces.get_workspace(session, ws)
            authorize(user, "read", "events", workspace)
            return (
                workspace.id,
                events.last_seq(session, workspace.id),
                event_reader(user, workspace),
            )

    workspace_id, first, readable = await run_in_threadpool(resolve)
    resume = request.headers.get("last-event-id", "")
    if resume.isdigit():
        first = int(resume)

    return live_response(request, context, workspace_id, criteria, first, readable, _unnamed)
