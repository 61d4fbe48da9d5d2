"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from flowlink.api.deps import Context
from flowlink.store.models import Execution

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.get("/health")
def health(request: Request, context: Context) -> dict[str, Any]:
    """200 once the server serves and its store answers.

    ``sandbox`` tells what confines flow scripts here (mode, how limits are enforced:
    ``cgroup-v1``, ``cgroup-v2`` or ``rlimit``, and the limits); null when no worker runs in
    this process.
    """
    with context.store.read() as session:
        session.execute(select(1))
    sandbox_info = getattr(request.app.state, "sandbox_info", None)
    sandbox = sandbox_info() if sandbox_info is not None else None
    return {"status": "ok", "store": context.store.dialect, "sandbox": sandbox}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(context: Context) -> str:
    """Prometheus text exposition: executions by status."""
    with context.store.read() as session:
        rows = session.execute(
            select(Execution.status, func.count()).group_by(Execution.status)
        ).all()
    lines = [
        "# HELP flowlink_executions Executions in the store by status.",
        "# TYPE flowlink_executions gauge",
    ]
    lines += [f'flowlink_executions{{status="{status}"}} {count}' for status, count in rows]
    return "\n".join(lines) + "\n"
