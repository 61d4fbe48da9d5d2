"""Operations: readiness for load balancers and the worker registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from flowlink.access import policy
from flowlink.api.deps import Caller, Context
from flowlink.api.responses import ApiRoute
from flowlink.executions import workers
from flowlink.executions.views import WorkerList
from flowlink.observability.health import readiness
from flowlink.observability.views import ReadyView

router = APIRouter(prefix="/api/v1", tags=["system"], route_class=ApiRoute)


@router.get(
    "/ready",
    response_model=ReadyView,
    responses={503: {"model": ReadyView, "description": "Not ready: a check failed"}},
)
def ready(context: Context, response: Response) -> dict[str, Any]:
    """200 when the store answers, its schema is current and a worker heartbeats; else 503."""
    result = readiness(context.store, workers.running_count)
    response.status_code = 200 if result.ready else 503
    return result.view()


@router.get("/workers", response_model=WorkerList)
def list_workers(context: Context, caller: Caller) -> dict[str, Any]:
    """Every registered worker process with its status (organization admin only)."""
    policy.authorize_admin(caller, "list workers")
    with context.store.read() as session:
        return {"items": [worker.view() for worker in workers.list_workers(session)]}
