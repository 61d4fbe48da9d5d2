"""Recording access decisions as events (``access.denied``), never with a secret."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from flowlink.access.policy import Denial
from flowlink.events.service import record
from flowlink.store.engine import Store
from flowlink.store.models import Workspace


def record_denial(session: Session, denial: Denial, http: dict[str, Any] | None = None) -> None:
    """Add an ``access.denied`` event for a denial made by :mod:`flowlink.access.policy`."""
    principal = denial.principal
    payload = {
        "action": denial.action,
        "subject": denial.subject,
        "reason": denial.reason,
        "attributes": denial.attributes,
        "principal": principal,
    }
    workspace_id = denial.workspace_id
    workspace = session.get(Workspace, workspace_id) if workspace_id else None
    record(
        session,
        workspace,
        "access.denied",
        payload,
        user_id=principal.get("userId"),
        execution_id=denial.execution_id,
        extra_source={"http": http} if http else None,
    )


def record_denials(store: Store, denials: list[Denial], http: dict[str, Any] | None = None) -> None:
    """Record denials in their own transaction (the denied one was rolled back)."""
    if not denials:
        return
    with store.write() as session:
        for denial in denials:
            record_denial(session, denial, http)
