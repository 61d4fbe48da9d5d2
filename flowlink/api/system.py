"""Health and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from flowlink.api.deps import Context
from flowlink.store.models import Execution

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.get("/health")
def health(context: Context) -> dict[str, Any]:
    """200 once the server serves and its store answers."""
    with context.store.read() as session:
        session.execute(select(1))
    return {"status": "ok", "store": context.store.dialect}


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
