"""The automations page: the graph as SVG, triggers, next cron firings, webhook keys."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flowlink.access.policy import allows, authorize
from flowlink.automations import webhooks
from flowlink.automations.graph import automation_graph, next_firings
from flowlink.store.models import utcnow
from flowlink.timestamps import format_timestamp
from flowlink.web.render import render
from flowlink.web.routes import Post, Viewer, workspace_for
from flowlink.web.session import WebRoute, context_of
from flowlink.workspaces import service as workspaces

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)
COLUMN_WIDTH, NODE_WIDTH, ROW_HEIGHT, NODE_HEIGHT = 220, 180, 44, 30


def _href(ws: str, kind: str, label: str, key: str) -> str:
    if kind == "flow":
        return f"/w/{ws}/flows/{quote(label)}"
    if kind == "event":
        return f"/w/{ws}/activity?types={quote(label)}"
    return f"#{key.split(':', 1)[0]}-{quote(key.split(':', 1)[1])}"


def _svg_graph(ws: str, workspace: Any, scripts: dict[str, str]) -> dict[str, Any]:
    graph = automation_graph(workspace, scripts)
    nodes: list[dict[str, Any]] = []
    for node in graph.nodes.values():
        x, y = node.column * COLUMN_WIDTH + 4, node.row * ROW_HEIGHT + 4
        target = node.key
        if node.kind in ("schedule", "webhook"):
            target = "automation:" + (
                node.key.split(":", 1)[1]
                if node.kind == "webhook"
                else next(t for s, t in graph.edges if s == node.key).split(":", 1)[1]
            )
        nodes.append(
            {
                "key": node.key,
                "kind": node.kind,
                "label": node.label if len(node.label) <= 24 else node.label[:23] + "…",
                "title": f"{node.kind}: {node.label}",
                "x": x,
                "y": y,
                "href": _href(ws, node.kind, node.label, target),
            }
        )
    where = {n["key"]: n for n in nodes}
    edges = []
    for source, target in graph.edges:
        a, b = where[source], where[target]
        x1, y1 = a["x"] + NODE_WIDTH, a["y"] + NODE_HEIGHT / 2
        x2, y2 = b["x"], b["y"] + NODE_HEIGHT / 2
        if x2 <= x1:  # an emitted event that also triggers: loop back under the nodes
            x2, y2 = b["x"] + NODE_WIDTH / 2, b["y"] + NODE_HEIGHT
        mid = (x1 + x2) / 2
        edges.append(f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
    rows = max((n.row for n in graph.nodes.values()), default=0) + 1
    columns = max((n.column for n in graph.nodes.values()), default=0) + 1
    return {
        "nodes": nodes,
        "edges": edges,
        "width": columns * COLUMN_WIDTH,
        "height": rows * ROW_HEIGHT + 8,
        "node_width": NODE_WIDTH,
        "node_height": NODE_HEIGHT,
    }


def _automations_page(
    request: Request, user: Any, ws: str, *, new_key: dict[str, str] | None = None
) -> Response:
    now = utcnow()
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "automations")
        scripts = {f.name: f.script for f in workspaces.list_flows(session, workspace)}
        rows = []
        for slug, automation in sorted((workspace.spec or {}).get("automations", {}).items()):
            when = automation.get("when", {})
            rows.append(
                {
                    "slug": slug,
                    "flow": automation.get("flow"),
                    "description": automation.get("description"),
                    "events": when.get("events") or [],
                    "schedules": [
                        {"cron": c, "next": [format_timestamp(t) for t in next_firings(c, now)]}
                        for c in when.get("schedules") or []
                    ],
                    "endpoint": bool(when.get("endpoint")),
                    "public": bool(automation.get("public")),
                    "url": f"/api/v1/workspaces/{ws}/webhooks/{slug}",
                }
            )
        graph = _svg_graph(ws, workspace, scripts)
        can_manage = allows(user, "manage", "automations", workspace)
    return render(
        request,
        "automations.html",
        {
            "ws": ws,
            "nav": "automations",
            "rows": rows,
            "graph": graph,
            "can_manage": can_manage,
            "new_key": new_key,
            "base": str(request.base_url).rstrip("/"),
        },
    )


@router.get("/w/{ws}/automations")
def automations_page(request: Request, ws: str, user: Viewer) -> Response:
    """Automations as a graph and a table with triggers, cron firings and webhook URLs."""
    return _automations_page(request, user, ws)


@router.post("/w/{ws}/automations/{automation}/webhook_key")
async def rotate_key(request: Request, ws: str, automation: str, sent: Post) -> Response:
    """Replace the automation's webhook key; the new key is shown once on the answer page."""

    def rotate() -> str:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "automations")
            authorize(sent.user, "manage", "automations", workspace)
            return webhooks.rotate_webhook_key(
                session, webhooks.get_webhook(session, workspace, automation)
            )

    key = await run_in_threadpool(rotate)
    return await run_in_threadpool(
        lambda: _automations_page(
            request, sent.user, ws, new_key={"automation": automation, "key": key}
        )
    )
