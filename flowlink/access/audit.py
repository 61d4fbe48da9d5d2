"""Recording access decisions as events (``access.denied``), never with a secret."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flowlink.events.service import record
from flowlink.store.engine import Store
from flowlink.store.models import Workspace


def record_denial(
    session: Session, denial: dict[str, Any], http: dict[str, Any] | None = None
) -> None:
    """Add an ``access.denied`` event for a denial made by :mod:`flowlink.access.policy`."""
    principal = denial.get("principal") or {}
    payload = {
        "action": denial.get("action"),
        "subject": denial.get("subject"),
        "reason": denial.get("reason"),
        "attributes": denial.get("attributes") or {},
        "principal": principal,
    }
    workspace_id = denial.get("workspace_id")
    workspace = session.get(Workspace, workspace_id) if workspace_id else None
    record(
        session,
        workspace,
        "access.denied",
        payload,
        user_id=principal.get("userId"),
        execution_id=denial.get("execution_id"),
        extra_source={"http": http} if http else None,
    )


def record_denials(
    store: Store, denials: list[dict[str, Any]], http: dict[str, Any] | None = None
) -> None:
    """Record denials in their own transaction (the denied one was rolled back)."""
    if not denials:
        return
    with store.write() as session:
        for denial in denials:
            record_denial(session, denial, http)
