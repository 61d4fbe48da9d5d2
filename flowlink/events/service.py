"""Recording events. Every event is written in the transaction of the change it records."""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from flowlink.errors import Invalid
from flowlink.store import notify
from flowlink.store.models import Event, Workspace, new_id, utcnow

EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_PAYLOAD_BYTES = 100_000


def validate_event_type(event_type: str) -> None:
    """Reject a type name outside ``^[A-Za-z0-9._-]{1,128}$``."""
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
        raise Invalid(
            f"invalid event type {event_type!r}: use 1-128 of A-Z a-z 0-9 . _ -",
            details={"field": "type"},
        )


def event_row(
    workspace_id: str | None,
    workspace_slug: str | None,
    event_type: str,
    payload: Any = None,
    *,
    correlation_id: str | None = None,
    execution_id: str | None = None,
    user_id: str | None = None,
    extra_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored row of one event, as column values (see DESIGN section 5 for the envelope)."""
    try:
        body = json.dumps(payload, separators=(",", ":"))
    except TypeError:  # e.g. a datetime: store what JSON can hold
        body = json.dumps(payload, separators=(",", ":"), default=str)
        payload = json.loads(body)
    source: dict[str, Any] = {
        "workspaceId": workspace_id,
        "workspaceSlug": workspace_slug,
        "correlationId": correlation_id,
        "executionId": execution_id,
        "userId": user_id,
    }
    if extra_source:
        source.update(extra_source)
    return {
        "id": new_id(),
        "workspace_id": workspace_id,
        "type": event_type,
        "created_at": utcnow(),
        "size": len(body),
        "source": {k: v for k, v in source.items() if v is not None},
        "payload": payload,
        "correlation_id": correlation_id,
    }


def record(
    session: Session,
    workspace: Workspace | None,
    event_type: str,
    payload: Any = None,
    **kwargs: Any,
) -> Event:
    """Add an event to the current transaction and announce it once committed."""
    event = Event(
        **event_row(
            workspace.id if workspace else None,
            workspace.slug if workspace else None,
            event_type,
            payload,
            **kwargs,
        )
    )
    session.add(event)
    notify.announce(session, notify.EVENTS, workspace.id if workspace else "")
    return event


def record_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many events (rows from ``event_row``) in one statement and announce them."""
    if not rows:
        return
    session.execute(insert(Event), rows)
    notify.announce(session, notify.EVENTS, "")


def record_custom(
    session: Session,
    workspace: Workspace,
    event_type: str,
    payload: Any,
    **kwargs: Any,
) -> Event:
    """Validate and record a custom event (from a flow, the API or the CLI)."""
    validate_event_type(event_type)
    size = len(json.dumps(payload, default=str))
    if size > MAX_PAYLOAD_BYTES:
        raise Invalid(
            f"event payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
            details={"field": "payload", "size": size, "limit": MAX_PAYLOAD_BYTES},
        )
    return record(session, workspace, event_type, payload, **kwargs)
