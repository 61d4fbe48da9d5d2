"""Operations: readiness for load balancers and the worker registry."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from flowlink.access import policy
from flowlink.api.deps import Caller, Context
from flowlink.executions import workers
from flowlink.observability.health import readiness

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.get("/ready")
def ready(context: Context) -> JSONResponse:
    """200 when the store answers, its schema is current and a worker heartbeats; else 503."""
    result = readiness(context.store, workers.running_count)
    return JSONResponse(result.view(), status_code=200 if result.ready else 503)


@router.get("/workers")
def list_workers(context: Context, caller: Caller) -> dict[str, Any]:
    """Every registered worker process with its status (organization admin only)."""
    policy.authorize_admin(caller, "list workers")
    with context.store.read() as session:
        return {"items": [worker.view() for worker in workers.list_workers(session)]}
