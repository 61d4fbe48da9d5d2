"""Automations reacting to events, webhooks and schedules: who listens, and starting them.

Custom events start every automation listening to their type (an indexed lookup on
``automation_triggers``), in the same transaction as the event. Each start carries the trigger
chain depth; a chain deeper than the limit stops with an ``error`` event.

Listenable native events (``LISTENABLE_NATIVE_EVENTS``) are collected while a transaction
records them and dispatched just before it commits (:func:`install`), so they start their
listeners atomically with the change too. An automation never fires on a native event caused
by one of its own runs, their children, or runs started by events those emitted: every
event-started execution carries its ``chain`` of automations.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from flowlink.access.service import identity_principal
from flowlink.errors import FlowlinkError
from flowlink.events.service import (
    DISPATCHING,
    NATIVE_PENDING,
    UNHEARD,
    check_payload_size,
    event_row,
    insert_rows,
    record,
    validate_event_type,
)
from flowlink.execution_status import ExecutionStatus
from flowlink.executions.service import create_execution
from flowlink.store import notify
from flowlink.store.models import (
    Automation,
    AutomationTrigger,
    Event,
    Execution,
    Workspace,
    new_id,
)
from flowlink.timestamps import format_timestamp

DEFAULT_MAX_DEPTH = 20
IDENTITY_KIND = {"endpoint": "webhook", "schedule": "schedule", "event": "automation"}


def chain_depth(session: Session, execution: Execution | None) -> int:
    """The trigger chain depth an execution runs at (inherited by its child executions)."""
    current = execution
    for _ in range(64):
        if current is None:
            return 0
        depth = (current.trigger or {}).get("chainDepth")
        if isinstance(depth, int):
            return depth
        if current.parent_id is None:
            return 0
        current = session.get(Execution, current.parent_id)
    return 0


def automation_chain(session: Session, execution: Execution | None) -> list[str]:
    """The automations whose triggers led to this execution (its own automation last)."""
    current = execution
    for _ in range(64):
        if current is None:
            return []
        trigger = current.trigger or {}
        chain = trigger.get("chain")
        if isinstance(chain, list):
            return [str(slug) for slug in chain]
        if trigger.get("automation"):
            return [str(trigger["automation"])]
        if current.parent_id is None:
            return []
        current = session.get(Execution, current.parent_id)
    return []


def _listeners(
    session: Session, workspace_id: str, event_types: Sequence[str]
) -> dict[str, list[tuple[str, str, str]]]:
    """(automation id, slug, flow) of the automations listening to each type: one indexed query."""
    found: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    if not event_types:
        return found
    rows = session.execute(
        select(AutomationTrigger.event_type, Automation.id, Automation.slug, Automation.flow_name)
        .join(Automation, Automation.id == AutomationTrigger.automation_id)
        .where(
            AutomationTrigger.workspace_id == workspace_id,
            AutomationTrigger.event_type.in_(sorted(set(event_types))),
        )
        .order_by(Automation.slug)
    )
    for event_type, automation_id, slug, flow in rows:
        found[event_type].append((automation_id, slug, flow))
    return found


def start_automation(
    session: Session,
    workspace: Workspace,
    *,
    automation_id: str,
    slug: str,
    flow: str,
    inputs: dict[str, Any],
    trigger_type: str,
    trigger_value: Any,
    correlation_id: str,
    depth: int,
    user_id: str | None = None,
    extra_trigger: Mapping[str, Any] | None = None,
    http: Mapping[str, Any] | None = None,
) -> Execution | None:
    """Queue one automation's flow and record ``runtime.interactions.triggered``.

    A missing flow does not undo the trigger: it is recorded as an ``error`` event instead.
    """
    source: dict[str, Any] = {"automationSlug": slug, "triggerDepth": depth}
    if http:
        source["http"] = dict(http)
    trigger = {
        "type": trigger_type,
        "automation": slug,
        "automationId": automation_id,
        "identity": f"automation:{automation_id}",
        "chainDepth": depth,
        **(extra_trigger or {}),
    }
    # The execution acts as the trigger's identity (webhook, schedule or automation), which
    # access control gives its roles.
    identity = identity_principal(
        IDENTITY_KIND[trigger_type], f"{workspace.slug}/{slug}", workspace
    ).describe()
    try:
        execution = create_execution(
            session,
            workspace,
            flow_name=flow,
            inputs=inputs,
            correlation_id=correlation_id,
            user_id=user_id,
            trigger=trigger,
            principal=identity,
            http=dict(http) if http else None,
        )
    except FlowlinkError as error:
        record(
            session,
            workspace,
            "error",
            {
                "message": f"automation {slug!r} could not start: {error.message}",
                "automation": slug,
                "trigger": {"type": trigger_type, "value": trigger_value},
            },
            correlation_id=correlation_id,
            extra_source=source,
        )
        return None
    record(
        session,
        workspace,
        "runtime.interactions.triggered",
        {
            "trigger": {"type": trigger_type, "value": trigger_value},
            "automation": slug,
            "flow": flow,
            "executionId": execution.id,
        },
        correlation_id=correlation_id,
        execution_id=execution.id,
        user_id=user_id,
        extra_source=source,
    )
    return execution


def _dispatch(
    session: Session,
    workspace: Workspace,
    envelopes: Sequence[dict[str, Any]],
    depth: int,
    max_depth: int,
    user_id: str | None,
    chain: Sequence[str] = (),
) -> None:
    listeners = _listeners(session, workspace.id, [e["type"] for e in envelopes])
    if not listeners:
        return
    for envelope in envelopes:
        targets = listeners.get(envelope["type"])
        if not targets:
            continue
        correlation_id = envelope["source"].get("correlationId") or new_id()
        if depth + 1 > max_depth:
            record(
                session,
                workspace,
                "error",
                {
                    "message": (
                        f"trigger chain stopped: event {envelope['type']!r} would start "
                        f"automations at depth {depth + 1}, over the limit of {max_depth}"
                    ),
                    "reason": "trigger_depth_limit",
                    "eventId": envelope["id"],
                    "eventType": envelope["type"],
                    "automations": [slug for _, slug, _ in targets],
                    "limit": max_depth,
                },
                correlation_id=correlation_id,
                extra_source={"triggerDepth": depth},
            )
            continue
        for automation_id, slug, flow in targets:
            start_automation(
                session,
                workspace,
                automation_id=automation_id,
                slug=slug,
                flow=flow,
                inputs=envelope,
                trigger_type="event",
                trigger_value=envelope["type"],
                correlation_id=correlation_id,
                depth=depth + 1,
                user_id=user_id,
                extra_trigger={
                    "eventId": envelope["id"],
                    "eventType": envelope["type"],
                    "chain": [*chain, slug],
                },
            )


def emit_many(
    session: Session,
    workspace: Workspace,
    items: Sequence[tuple[str, Any]],
    *,
    correlation_id: str | None = None,
    execution_id: str | None = None,
    user_id: str | None = None,
    depth: int = 0,
    max_depth: int = DEFAULT_MAX_DEPTH,
    source: Mapping[str, Any] | None = None,
    chain: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Record custom events ``(type, payload)`` in one statement and start their listeners.

    Every event of the call shares one correlation id (a new one unless given). ``chain`` is
    the emitting execution's automation chain. Returns the stored envelopes, in order.
    """
    correlation_id = correlation_id or new_id()
    extra: dict[str, Any] = dict(source or {})
    if depth:
        extra["triggerDepth"] = depth
    rows = []
    for index, (event_type, payload) in enumerate(items):
        try:
            validate_event_type(event_type)
            row = event_row(
                workspace.id,
                workspace.slug,
                event_type,
                payload,
                correlation_id=correlation_id,
                execution_id=execution_id,
                user_id=user_id,
                extra_source=extra or None,
            )
            check_payload_size(row["size"])
        except FlowlinkError as error:
            if len(items) > 1:
                error.message = f"events[{index}]: {error.message}"
                error.details = {**error.details, "index": index}
            raise
        rows.append(row)
    # A plain executemany, then one indexed read of the seqs: RETURNING with a guaranteed
    # order falls back to one statement per row on SQLite.
    insert_rows(session, rows)
    seqs: dict[str, int] = {}
    ids = [row["id"] for row in rows]
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        for event_id, seq in session.execute(
            select(Event.id, Event.seq).where(Event.id.in_(chunk))
        ):
            seqs[event_id] = seq
    notify.announce(session, notify.EVENTS, workspace.id)
    envelopes = []
    for row in rows:
        envelopes.append(
            {
                "id": row["id"],
                "seq": seqs[row["id"]],
                "type": row["type"],
                "created_at": format_timestamp(row["created_at"]),
                "size": row["size"],
                "source": row["source"],
                "payload": row["payload"],
            }
        )
    _dispatch(session, workspace, envelopes, depth, max_depth, user_id, chain)
    return envelopes


def emit(
    session: Session,
    workspace: Workspace,
    event_type: str,
    payload: Any = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """Record one custom event and start its listeners (see ``emit_many``)."""
    return emit_many(session, workspace, [(event_type, payload)], **kwargs)[0]


def emit_from_execution(
    session: Session,
    workspace: Workspace,
    execution_id: str,
    event_type: str,
    payload: Any,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """``this.emit``: an event in the execution's correlation, one level deeper in the chain."""
    execution = session.get(Execution, execution_id)
    source: dict[str, Any] = {}
    if execution is not None and (execution.trigger or {}).get("automation"):
        source["automationSlug"] = execution.trigger["automation"]
    if execution is not None and execution.app:
        source["appInstanceFullSlug"] = execution.app["instance"]
        source["appInstanceDepth"] = int(execution.app["depth"])
    if execution is not None and (execution.trigger or {}).get("sessionId"):
        source["sessionId"] = execution.trigger["sessionId"]
    return emit(
        session,
        workspace,
        event_type,
        payload,
        correlation_id=execution.correlation_id if execution else None,
        execution_id=execution_id,
        user_id=execution.user_id if execution else None,
        depth=chain_depth(session, execution),
        max_depth=max_depth,
        source=source,
        chain=automation_chain(session, execution),
    )


# --- native events -----------------------------------------------------------------------------


def install(session_class: type[Session]) -> None:
    """Dispatch a transaction's listenable native events just before it commits.

    Install before ``notify.install`` so the executions it queues are announced with the rest.
    """

    @sa_event.listens_for(session_class, "before_commit")
    def _before_commit(session: Session) -> None:
        if session.info.get(NATIVE_PENDING):
            dispatch_native(session)

    @sa_event.listens_for(session_class, "after_rollback")
    def _after_rollback(session: Session) -> None:
        session.info.pop(NATIVE_PENDING, None)


def _native_max_depth() -> int:
    raw = os.environ.get("FLOWLINK_EVENT_TRIGGER_DEPTH", "")
    return int(raw) if raw.strip().isdigit() else DEFAULT_MAX_DEPTH


def _listened_types(row: Mapping[str, Any]) -> list[str]:
    """The ``when.events`` entries that hear this native event."""
    event_type = str(row["type"])
    types = [event_type]
    if event_type.startswith("sync."):
        types.append("sync.*")
    payload = row.get("payload")
    if (
        event_type == "executions.ended"
        and isinstance(payload, dict)
        and payload.get("status") == ExecutionStatus.ERROR
    ):
        types.append("executions.failed")
    return types


# Built once (a transaction that records a listenable event runs it just before it commits).
_LISTENERS = (
    select(
        AutomationTrigger.workspace_id,
        AutomationTrigger.event_type,
        Automation.id,
        Automation.slug,
        Automation.flow_name,
    )
    .join(Automation, Automation.id == AutomationTrigger.automation_id)
    .where(
        AutomationTrigger.workspace_id.in_(bindparam("workspaces", expanding=True)),
        AutomationTrigger.event_type.in_(bindparam("types", expanding=True)),
    )
    .order_by(Automation.slug)
)


def dispatch_native(session: Session) -> None:
    """Start the automations listening to the native events this transaction recorded.

    One indexed query finds the listeners of all of them (none for the events of workspaces
    this transaction read to have no listener: ``events.service.note_unheard``; an exchange of
    a link reads it with its link). Automations in the causing
    execution's chain are skipped (no automation fires on its own runs), the trigger depth
    limit applies as for custom events, and what the dispatch itself records is not
    dispatched again.
    """
    rows = session.info.pop(NATIVE_PENDING, None) or []
    unheard = session.info.get(UNHEARD) or ()
    rows = [row for row in rows if row["workspace_id"] not in unheard]
    if not rows:  # none, or only of workspaces read to have no listener in this transaction
        return
    wanted = {(r["workspace_id"], t) for r in rows for t in _listened_types(r)}
    found = session.execute(
        _LISTENERS,
        {"workspaces": sorted({w for w, _ in wanted}), "types": sorted({t for _, t in wanted})},
    ).all()
    listeners: dict[tuple[str, str], list[tuple[str, str, str]]] = defaultdict(list)
    for workspace_id, event_type, automation_id, slug, flow in found:
        listeners[(workspace_id, event_type)].append((automation_id, slug, flow))
    if not listeners:
        return
    session.info[DISPATCHING] = True
    try:
        session.flush()
        max_depth = _native_max_depth()
        for row in rows:
            _dispatch_one_native(session, row, listeners, max_depth)
    finally:
        session.info.pop(DISPATCHING, None)


def _dispatch_one_native(
    session: Session,
    row: Mapping[str, Any],
    listeners: Mapping[tuple[str, str], list[tuple[str, str, str]]],
    max_depth: int,
) -> None:
    targets: dict[str, tuple[str, str, str, str]] = {}
    for listened in _listened_types(row):
        for automation_id, slug, flow in listeners.get((row["workspace_id"], listened), ()):
            targets.setdefault(automation_id, (automation_id, slug, flow, listened))
    if not targets:
        return
    workspace = session.get(Workspace, row["workspace_id"])
    if workspace is None:
        return
    source = row.get("source") or {}
    cause = session.get(Execution, source["executionId"]) if source.get("executionId") else None
    chain = automation_chain(session, cause)
    depth = source.get("triggerDepth")
    if not isinstance(depth, int):
        depth = chain_depth(session, cause)
    correlation_id = row.get("correlation_id") or new_id()
    seq = session.scalar(select(Event.seq).where(Event.id == row["id"]))
    envelope = {
        "id": row["id"],
        "seq": seq,
        "type": row["type"],
        "created_at": format_timestamp(row["created_at"]),
        "size": row["size"],
        "source": source,
        "payload": row.get("payload"),
    }
    starting = [t for t in targets.values() if t[1] not in chain]
    if not starting:
        return
    if depth + 1 > max_depth:
        record(
            session,
            workspace,
            "error",
            {
                "message": (
                    f"trigger chain stopped: event {row['type']!r} would start automations"
                    f" at depth {depth + 1}, over the limit of {max_depth}"
                ),
                "reason": "trigger_depth_limit",
                "eventId": row["id"],
                "eventType": row["type"],
                "automations": [slug for _, slug, _, _ in starting],
                "limit": max_depth,
            },
            correlation_id=correlation_id,
            extra_source={"triggerDepth": depth},
        )
        return
    for automation_id, slug, flow, listened in starting:
        start_automation(
            session,
            workspace,
            automation_id=automation_id,
            slug=slug,
            flow=flow,
            inputs=envelope,
            trigger_type="event",
            trigger_value=listened,
            correlation_id=correlation_id,
            depth=depth + 1,
            extra_trigger={
                "eventId": row["id"],
                "eventType": row["type"],
                "native": True,
                "chain": [*chain, slug],
            },
        )
