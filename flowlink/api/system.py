"""Health (liveness) and Prometheus metrics."""

from __future__ import annotations

import socket
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from flowlink.api.deps import Context
from flowlink.api.responses import ApiRoute
from flowlink.executions import workers
from flowlink.executions.service import queue_depth
from flowlink.linking.outbox import depths as outbox_depths
from flowlink.observability import metrics
from flowlink.observability.views import HealthView

router = APIRouter(prefix="/api/v1", tags=["system"], route_class=ApiRoute)


@router.get("/health", response_model=HealthView)
async def health(request: Request, context: Context) -> dict[str, Any]:
    """Liveness: 200 while the process serves (readiness, with the store: ``/ready``).

    Answered on the event loop: it reads nothing from the store, so it does not queue for a
    thread behind the requests that do (200 clients starting executions at once).

    ``sandbox`` tells what confines flow scripts here (mode, how limits are enforced:
    ``cgroup-v1``, ``cgroup-v2`` or ``rlimit``, and the limits); null when no worker runs in
    this process.
    """
    sandbox_info = getattr(request.app.state, "sandbox_info", None)
    sandbox = sandbox_info() if sandbox_info is not None else None
    return {"status": "ok", "store": context.store.dialect, "sandbox": sandbox}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Prometheus text exposition",
            "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}},
        }
    },
)
def metrics_endpoint(context: Context) -> Response:
    """Prometheus text exposition (see docs/operations.md for the list)."""

    def store_state() -> tuple[int, dict[str, int]]:
        with context.store.read() as session:
            return queue_depth(session), outbox_depths(session)

    if metrics.multiprocess_dir():  # a killed worker's live gauges must not linger
        with context.store.read() as session:
            gone = workers.gone_pids_on_host(session, socket.gethostname())
        for pid in gone:
            metrics.process_exited(pid)
    body = metrics.render(metrics.StoreGauges(store_state))
    return Response(body, media_type=metrics.CONTENT_TYPE)
