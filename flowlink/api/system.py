"""Health (liveness) and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from flowlink.api.deps import Context
from flowlink.executions.service import queue_depth
from flowlink.linking.outbox import depths as outbox_depths
from flowlink.observability import metrics

router = APIRouter(prefix="/api/v1", tags=["system"])


@router.get("/health")
def health(context: Context) -> dict[str, Any]:
    """Liveness: 200 while the process serves (readiness, with the store: ``/ready``)."""
    return {"status": "ok", "store": context.store.dialect}


@router.get("/metrics", response_class=Response)
def metrics_endpoint(context: Context) -> Response:
    """Prometheus text exposition (see docs/operations.md for the list)."""

    def store_state() -> tuple[int, dict[str, int]]:
        with context.store.read() as session:
            return queue_depth(session), outbox_depths(session)

    body = metrics.render(metrics.StoreGauges(store_state))
    return Response(body, media_type=metrics.CONTENT_TYPE)
