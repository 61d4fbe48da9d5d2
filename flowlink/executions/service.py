"""Executions: creating them, the queue (claim, lease, reap), cancelling, ending, logs."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Row,
    String,
    Text,
    and_,
    bindparam,
    cast,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from flowlink.apps.service import app_source, resolve_flow
from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.events.service import automation_executed_row, event_row, record_row, record_rows
from flowlink.execution_status import (
    ACTIVE,
    ALLOWED,
    ENDED,
    ExecutionStatus,
    IllegalTransition,
    Outcome,
    as_status,
    is_ended,
    transition,
)
from flowlink.observability import metrics
from flowlink.observability.tracing import current_traceparent, valid_traceparent
from flowlink.store import notify
from flowlink.store.models import (
    Execution,
    ExecutionLog,
    SyncConfig,
    Workspace,
    new_id,
    utcnow,
)
from flowlink.timestamps import format_optional
from flowlink.workspaces.service import check_name, find_flow, get_flow

__all__ = ["ACTIVE", "ENDED", "ExecutionStatus", "IllegalTransition", "Outcome", "is_ended"]

MAX_LOG_LINE = 65_536


def create_execution(
    session: Session,
    workspace: Workspace,
    *,
    flow_name: str | None = None,
    script: str | None = None,
    inputs: Any = None,
    parent: Execution | None = None,
    correlation_id: str | None = None,
    user_id: str | None = None,
    trigger: dict[str, Any] | None = None,
    max_runtime: float | None = None,
    default_max_runtime: float = 3600.0,
    principal: dict[str, Any] | None = None,
    remote_config_id: str | None = None,
    traceparent: str | None = None,
    http: dict[str, Any] | None = None,
) -> Execution:
    """Queue an execution of a flow (or of an ad-hoc script) with a snapshot of its script.

    ``http`` (method, path, ip) is the request that started it, for the ``executions.created``
    event. A login session's id in ``trigger["sessionId"]`` is inherited by children.

    ``principal`` (``Principal.describe()``) is who it acts as; a child inherits its parent's.
    ``remote_config_id`` marks an execution that runs in a linked workspace and is only
    mirrored here (see ``flowlink.linking.exchange``): no worker ever claims it.
    ``traceparent`` (W3C) defaults to the current span's when tracing is on.
    """
    if inputs is not None and not isinstance(inputs, dict):
        raise Invalid("inputs must be a JSON object", details={"field": "inputs"})
    trigger = dict(trigger or {"type": "api"})
    inherited = (parent.trigger or {}).get("sessionId") if parent is not None else None
    if inherited and "sessionId" not in trigger:
        trigger["sessionId"] = inherited
    if max_runtime is not None and not (0 < max_runtime <= 7 * 24 * 3600):
        raise Invalid(
            "max_runtime must be between 0 and 604800 seconds", details={"field": "max_runtime"}
        )
    flow_id = None
    app: dict[str, Any] | None = None
    if script is None:
        if not flow_name:
            raise Invalid("either flow or script is required", details={"field": "flow"})
        script, flow_id, app = _flow_script(session, workspace, flow_name, parent)
    else:
        flow_name = flow_name or "script"
        check_name("flow", flow_name)
        if not isinstance(script, str):
            raise Invalid("script must be a string", details={"field": "script"})
    execution = Execution(
        id=new_id(),
        workspace_id=workspace.id,
        flow_name=flow_name,
        flow_id=flow_id,
        script=script,
        inputs=inputs or {},
        outputs={},
        status=ExecutionStatus.QUEUED,
        created_at=utcnow(),
        parent_id=parent.id if parent else None,
        correlation_id=correlation_id or (parent.correlation_id if parent else new_id()),
        depth=parent.depth + 1 if parent else 0,
        max_runtime=max_runtime or default_max_runtime,
        user_id=user_id or (parent.user_id if parent else None),
        trigger=trigger,
        cancel_requested=False,
        principal=principal if principal is not None else (parent.principal if parent else None),
        remote_config_id=remote_config_id,
        app=app,
        traceparent=traceparent if valid_traceparent(traceparent) else current_traceparent(),
    )
    session.add(execution)
    record_row(
        session,
        event_row(
            workspace.id,
            workspace.slug,
            "executions.created",
            {"id": execution.id, "flow": flow_name, "parentId": execution.parent_id},
            correlation_id=execution.correlation_id,
            execution_id=execution.id,
            user_id=execution.user_id,
            extra_source=execution_source(trigger, http, app),
        ),
    )
    if remote_config_id is None:
        notify.announce(session, notify.QUEUED, execution.id)
    return execution


def _flow_script(
    session: Session, workspace: Workspace, name: str, parent: Execution | None
) -> tuple[str, str | None, dict[str, Any] | None]:
    """Script, flow id and app context of flow ``name`` started from ``parent``.

    The workspace's own flows first (from the host only); then, as ``instance.flow``, the
    flows of an installed app instance (see ``flowlink.apps.service.resolve_flow``).
    """
    context = parent.app if parent is not None else None
    if context is None:
        flow = find_flow(session, workspace, name)
        if flow is not None:
            return flow.script, flow.id, None
    resolved = resolve_flow(session, workspace, context, name)
    if resolved is None:
        if context is not None:
            raise NotFound(
                f"flow {name!r} not found in app instance {context['instance']!r}",
                details={"workspace": workspace.slug, "flow": name},
            )
        get_flow(session, workspace, name)  # raises the usual NotFound
    assert resolved is not None
    return resolved[0], None, resolved[1]


def execution_source(
    trigger: dict[str, Any] | None,
    http: dict[str, Any] | None = None,
    app: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The event ``source`` fields an execution adds: its login session, automation and
    app instance."""
    trigger = trigger or {}
    source: dict[str, Any] = {}
    if trigger.get("sessionId"):
        source["sessionId"] = trigger["sessionId"]
    if trigger.get("automation"):
        source["automationSlug"] = trigger["automation"]
    if http:
        source["http"] = dict(http)
    source.update(app_source(app) or {})
    return source or None


def get_execution(session: Session, workspace: Workspace, execution_id: str) -> Execution:
    """An execution of this workspace, or NotFound."""
    execution = session.get(Execution, execution_id)
    if execution is None or execution.workspace_id != workspace.id:
        raise NotFound(
            f"execution {execution_id!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "execution": execution_id},
        )
    return execution


def list_executions(
    session: Session,
    workspace: Workspace,
    *,
    status: str | None = None,
    flow: str | None = None,
    parent_id: str | None = None,
    limit: int = 50,
    before: str | None = None,
    trigger: str | None = None,
    user_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[Execution]:
    """Executions of a workspace, newest first; ``before`` is the last id of the previous page.

    ``trigger`` is a trigger type (api, console, flow, event, schedule, webhook, link...),
    ``user_id`` who started it, ``since``/``until`` a window on the creation time.
    """
    query = select(Execution).where(Execution.workspace_id == workspace.id)
    if not parent_id:
        # Runs started through a link whose config follows the older meaning of "send all
        # executions" (unset) stay out of the list (their parents still show them).
        hidden = select(SyncConfig.id).where(
            SyncConfig.workspace_id == workspace.id,
            SyncConfig.send_all_executions_meaning == "list",
            SyncConfig.send_all_executions.is_(False),
        )
        query = query.where(
            or_(Execution.remote_config_id.is_(None), Execution.remote_config_id.not_in(hidden))
        )
    if trigger:
        query = query.where(Execution.trigger["type"].as_string() == trigger)
    if user_id:
        query = query.where(Execution.user_id == user_id)
    if since:
        query = query.where(Execution.created_at >= since)
    if until:
        query = query.where(Execution.created_at <= until)
    if status:
        if status not in tuple(ExecutionStatus):
            raise Invalid(f"unknown status {status!r}", details={"field": "status"})
        query = query.where(Execution.status == status)
    if flow:
        query = query.where(Execution.flow_name == flow)
    if parent_id:
        query = query.where(Execution.parent_id == parent_id)
    if before:
        cursor = session.get(Execution, before)
        if cursor is None:
            raise Invalid(f"unknown cursor {before!r}", details={"field": "before"})
        query = query.where(
            or_(
                Execution.created_at < cursor.created_at,
                and_(Execution.created_at == cursor.created_at, Execution.id < cursor.id),
            )
        )
    query = query.order_by(Execution.created_at.desc(), Execution.id.desc()).limit(limit)
    return list(session.scalars(query))


def statuses(session: Session, execution_ids: Sequence[str]) -> dict[str, str]:
    """The status of each of these executions that exists (one small query, no ORM objects:
    cheaper than loading whole rows to look at one column)."""
    rows = session.execute(
        select(Execution.id, Execution.status).where(Execution.id.in_(list(execution_ids)))
    )
    return {execution_id: status for execution_id, status in rows}


def child_ids(session: Session, execution_id: str) -> list[str]:
    """The ids of an execution's children, oldest first."""
    return list(
        session.scalars(
            select(Execution.id)
            .where(Execution.parent_id == execution_id)
            .order_by(Execution.created_at)
        )
    )


def execution_view(
    execution: Execution,
    workspace_slug: str,
    *,
    children: Sequence[str] | None = None,
    with_script: bool = False,
) -> dict[str, Any]:
    """The API (and ``flow_api`` record) representation of an execution."""
    duration = None
    if execution.started_at and execution.ended_at:
        duration = (execution.ended_at - execution.started_at).total_seconds()
    view: dict[str, Any] = {
        "id": execution.id,
        "workspace": workspace_slug,
        "name": execution.flow_name,
        "status": execution.status,
        "message": execution.message,
        "input_value": execution.inputs,
        "output_value": execution.outputs,
        "error_kind": execution.error_kind,
        "created_at": format_optional(execution.created_at),
        "started_at": format_optional(execution.started_at),
        "ended_at": format_optional(execution.ended_at),
        "duration": duration,
        "parent_id": execution.parent_id,
        "correlation_id": execution.correlation_id,
        "depth": execution.depth,
        "max_runtime": execution.max_runtime,
        "trigger": execution.trigger,
        "user_id": execution.user_id,
        "mirrored": execution.remote_config_id is not None,
    }
    if execution.app:  # an app instance's flow: which instance and version it runs
        view["app"] = {k: execution.app.get(k) for k in ("instance", "app", "version")}
    if children is not None:
        view["children"] = list(children)
    if with_script:
        view["script"] = execution.script
    return view


# --- logs -------------------------------------------------------------------------------------


def append_logs(
    session: Session,
    execution_id: str,
    lines: Iterable[str],
    *,
    workspace_id: str | None = None,
) -> None:
    """Append log lines to an execution (and announce them to log followers and links)."""
    now = utcnow()
    rows = [
        {"execution_id": execution_id, "created_at": now, "line": line[:MAX_LOG_LINE]}
        for line in lines
    ]
    if not rows:
        return
    session.execute(insert(ExecutionLog), rows)
    if workspace_id is None:
        execution = session.get(Execution, execution_id)  # usually already in the session
        workspace_id = execution.workspace_id if execution is not None else ""
    notify.announce(session, notify.LOGS, workspace_id)


def get_logs(
    session: Session, execution_id: str, *, after: int = 0, limit: int = 1000
) -> list[ExecutionLog]:
    """Log lines after the id ``after``, oldest first."""
    return list(
        session.scalars(
            select(ExecutionLog)
            .where(ExecutionLog.execution_id == execution_id, ExecutionLog.id > after)
            .order_by(ExecutionLog.id)
            .limit(limit)
        )
    )


def log_view(entry: ExecutionLog) -> dict[str, Any]:
    """The API representation of a log line."""
    return {"id": entry.id, "created_at": format_optional(entry.created_at), "line": entry.line}


# --- running state ----------------------------------------------------------------------------


def save_progress(
    session: Session, execution_id: str, *, outputs: dict[str, Any] | None, message: str | None
) -> Execution:
    """Merge outputs and set the message of a running execution."""
    execution = session.get(Execution, execution_id)
    if execution is None:
        raise NotFound(f"execution {execution_id!r} not found")
    if execution.status in ENDED:
        raise Conflict(f"execution {execution_id} has ended and cannot change")
    if outputs:
        execution.outputs = {**(execution.outputs or {}), **outputs}
    if message is not None:
        execution.message = message
    return execution


# Built once: a status change of one execution, if it still has the status it is changed from.
_MOVE_STATUS = (
    update(Execution)
    .where(Execution.id == bindparam("b_id"), Execution.status == bindparam("b_from"))
    .values(status=bindparam("b_to"))
)


def set_waiting(session: Session, execution_id: str, waiting: bool) -> bool:
    """Mark a running execution as waiting on a child (or running again); False if it was
    not running (or waiting), or does not exist."""
    current, new = ExecutionStatus.RUNNING, ExecutionStatus.WAITING
    if not waiting:
        current, new = new, current
    # On the connection (plain SQL): through the session, the ORM would first flush it and
    # evaluate the condition against every loaded object, most of the cost for one row.
    result = session.connection().execute(
        _MOVE_STATUS,
        {"b_id": execution_id, "b_from": current, "b_to": transition(current, new)},
    )
    return bool(result.rowcount)


def set_status(execution: Execution, new: ExecutionStatus) -> None:
    """Move a loaded execution to ``new`` (``IllegalTransition`` if the table forbids it).

    Endings go through ``finish_many`` instead: it also records ``executions.ended``.
    """
    execution.status = transition(execution.status, new)


CancelRemote = Callable[[Session, Execution, str], None]
"""Cancels an execution that runs in a linked workspace (``linking.exchange.cancel_mirrored``)."""


def request_cancel(
    session: Session,
    execution: Execution,
    *,
    reason: str = "cancelled",
    cancel_remote: CancelRemote,
) -> None:
    """Cancel an execution and its unfinished descendants.

    A queued one ends at once; a running one is flagged and its worker kills the runner.
    """
    if execution.status in ENDED:
        raise Conflict(
            f"execution {execution.id} has already ended ({execution.status})",
            details={"status": execution.status},
        )
    pending = [execution]
    while pending:
        current = pending.pop()
        if current.remote_config_id is not None:
            # It runs in a linked workspace: the link carries the cancel over.
            cancel_remote(session, current, reason)
        elif current.status == ExecutionStatus.QUEUED:
            cancelled = Outcome(ExecutionStatus.CANCELLED, reason, error_kind="cancelled")
            finish_many(session, [(current.id, cancelled)])
        elif current.status in ACTIVE:
            current.cancel_requested = True
            notify.announce(session, notify.CANCEL, current.id)
        pending.extend(
            session.scalars(
                select(Execution).where(
                    Execution.parent_id == current.id,
                    Execution.status.in_((ExecutionStatus.QUEUED, *ACTIVE)),
                )
            )
        )


@dataclass(frozen=True)
class Claimed:
    """A claimed execution with what its runner needs from its workspace."""

    execution: Execution
    workspace_slug: str
    config: dict[str, Any]


def any_queued(session: Session) -> bool:
    """Whether any execution waits in the queue (a read: no write lock, no row lock)."""
    return (
        session.scalar(
            select(Execution.id)
            .where(Execution.status == ExecutionStatus.QUEUED, Execution.remote_config_id.is_(None))
            .limit(1)
        )
        is not None
    )


def claim(session: Session, worker_id: str, limit: int, lease_seconds: float) -> list[Claimed]:
    """Take up to ``limit`` queued executions for this worker in one short transaction.

    Deeper executions (children) go first so that waiting parents are never starved.
    """
    now = utcnow()
    # Lock the candidates first, then update them by id. A single
    # "UPDATE ... WHERE id IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)" is not safe on
    # PostgreSQL: the planner may re-run the sub-select and claim more than n rows.
    candidates = list(
        session.scalars(
            select(Execution.id)
            .where(Execution.status == ExecutionStatus.QUEUED, Execution.remote_config_id.is_(None))
            .order_by(Execution.depth.desc(), Execution.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    if not candidates:
        return []
    claimed = list(
        session.scalars(
            update(Execution)
            .where(Execution.id.in_(candidates), Execution.status == ExecutionStatus.QUEUED)
            .values(
                status=transition(ExecutionStatus.QUEUED, ExecutionStatus.RUNNING),
                started_at=now,
                worker_id=worker_id,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
            )
            .returning(Execution),
            execution_options={"synchronize_session": False},
        )
    )
    workspaces = _workspaces(session, {e.workspace_id for e in claimed})
    return [_started(session, e, workspaces[e.workspace_id], worker_id) for e in claimed]


def claim_new(
    session: Session,
    execution: Execution,
    workspace: Workspace,
    worker_id: str,
    lease_seconds: float,
) -> Claimed:
    """Claim an execution created in this transaction for a worker of this process.

    Used when that worker has a free slot (a child for the worker of its parent, or a new
    execution when nothing older waits): it starts without a queue round trip, and no
    worker is woken for it.
    """
    notify.withdraw(session, notify.QUEUED, execution.id)
    now = utcnow()
    set_status(execution, ExecutionStatus.RUNNING)
    execution.started_at = now
    execution.worker_id = worker_id
    execution.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return _started(session, execution, workspace, worker_id)


def claim_created(
    session: Session, execution_id: str, worker_id: str, lease_seconds: float
) -> Claimed | None:
    """``claim_new`` by id, for an execution queued in this transaction; None if it is no
    longer queued (or runs in a linked workspace)."""
    # Not flushed yet (the usual case): take the pending object instead of flushing and
    # reading it back; once flushed, it is in the identity map and ``get`` reads nothing.
    pending = (o for o in session.new if isinstance(o, Execution) and o.id == execution_id)
    execution = next(pending, None) or session.get(Execution, execution_id)
    if (
        execution is None
        or execution.status != ExecutionStatus.QUEUED
        or execution.remote_config_id is not None
    ):
        return None
    workspace = session.get(Workspace, execution.workspace_id)
    if workspace is None:
        return None
    return claim_new(session, execution, workspace, worker_id, lease_seconds)


def _started(
    session: Session, execution: Execution, workspace: Workspace, worker_id: str
) -> Claimed:
    record_row(
        session,
        event_row(
            workspace.id,
            workspace.slug,
            "executions.started",
            {"id": execution.id, "flow": execution.flow_name, "worker": worker_id},
            correlation_id=execution.correlation_id,
            execution_id=execution.id,
            user_id=execution.user_id,
            extra_source=execution_source(execution.trigger, app=execution.app),
        ),
    )
    waited = (execution.started_at or utcnow()) - execution.created_at
    metrics.count_started(session, [(workspace.slug, waited.total_seconds())])
    if execution.app:  # an app instance's flow runs with the instance's config
        return Claimed(execution, workspace.slug, dict(execution.app.get("config") or {}))
    return Claimed(execution, workspace.slug, workspace.config_rendered or {})


def renew_leases(
    session: Session, worker_id: str, execution_ids: Sequence[str], lease_seconds: float
) -> set[str]:
    """Extend this worker's leases; returns the ids whose cancellation was requested."""
    if not execution_ids:
        return set()
    # Lock in id order (as an ending does) and skip rows another transaction holds (an ending
    # or a cancel: their lease is renewed at the next beat). An UPDATE by a list of ids locks
    # its rows in scan order, which could deadlock with a batch of endings on PostgreSQL.
    renewable = list(
        session.scalars(
            select(Execution.id)
            .where(
                Execution.id.in_(execution_ids),
                Execution.worker_id == worker_id,
                Execution.status.in_(ACTIVE),
            )
            .order_by(Execution.id)
            .with_for_update(skip_locked=True)
        )
    )
    if renewable:
        session.execute(
            update(Execution)
            .where(Execution.id.in_(renewable))
            .values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds))
        )
    return set(
        session.scalars(
            select(Execution.id).where(
                Execution.id.in_(execution_ids),
                or_(Execution.cancel_requested.is_(True), Execution.status.in_(ENDED)),
            )
        )
    )


# The ending's statements, built once: a select of what the ending needs (with the workspace's
# slug, and locked on PostgreSQL) and one executemany UPDATE by id on the connection.
_ENDING_ROWS = (
    select(
        Execution.id,
        Execution.workspace_id,
        Execution.status,
        Execution.worker_id,
        Execution.started_at,
        Execution.flow_name,
        Execution.correlation_id,
        Execution.user_id,
        Execution.outputs,
        Execution.message,
        Execution.trigger,
        Execution.app,
        # what else the ended execution's record has (``views`` of ``finish_many``)
        Execution.inputs,
        Execution.created_at,
        Execution.parent_id,
        Execution.depth,
        Execution.max_runtime,
        Execution.remote_config_id,
        Workspace.slug,
    )
    .join(Workspace, Workspace.id == Execution.workspace_id)
    .where(Execution.id.in_(bindparam("ids", expanding=True)))
    .order_by(Execution.id)  # rows are locked in id order, as renew_leases locks them
    .with_for_update(of=Execution)
)
_ENDED_COLUMNS = (
    "status",
    "message",
    "outputs",
    "error_kind",
    "started_at",
    "ended_at",
    "lease_expires_at",
)
_END_UPDATE = (
    update(Execution)
    .where(Execution.id == bindparam("b_id"))
    .values({name: bindparam(name) for name in _ENDED_COLUMNS})
)


# One ending as one ``UPDATE ... RETURNING`` (``_end_returning``), built once per variant:
# (owned by a given worker, the outcome brings outputs). It returns what ``_ENDING_ROWS``
# reads, with the new values of the ended columns; the workspace's slug by a scalar
# sub-select, which SQLite allows there.
_ENDABLE = sorted(status for status, targets in ALLOWED.items() if targets.issuperset(ENDED))
_RETURNED = (
    *(column for column in _ENDING_ROWS.selected_columns if column.key != "slug"),
    select(Workspace.slug)
    .where(Workspace.id == Execution.workspace_id)
    .scalar_subquery()
    .label("slug"),
)


def _end_returning_statement(by_worker: bool, with_outputs: bool) -> Any:
    conditions = [Execution.id == bindparam("b_id"), Execution.status.in_(_ENDABLE)]
    if by_worker:
        conditions.append(Execution.worker_id == bindparam("b_worker"))
    values: dict[str, Any] = {
        "status": bindparam("status"),
        "message": func.coalesce(bindparam("message", type_=String()), Execution.message),
        "error_kind": bindparam("error_kind"),
        "started_at": func.coalesce(
            Execution.started_at, bindparam("started_at", type_=Execution.started_at.type)
        ),
        "ended_at": bindparam("ended_at"),
        "lease_expires_at": None,
    }
    if with_outputs:
        # Only over no outputs yet (a merge with outputs saved before takes the select path);
        # stored as JSON text, where "null" is what a write of None leaves.
        conditions.append(
            or_(Execution.outputs.is_(None), cast(Execution.outputs, Text).in_(("{}", "null")))
        )
        values["outputs"] = bindparam("outputs")
    return update(Execution).where(*conditions).values(values).returning(*_RETURNED)


_END_RETURNING = {
    (by_worker, with_outputs): _end_returning_statement(by_worker, with_outputs)
    for by_worker in (False, True)
    for with_outputs in (False, True)
}


def _end_returning(
    session: Session,
    execution_id: str,
    outcome: Outcome,
    worker_id: str | None,
    now: datetime,
    started_at: datetime | None = None,
) -> Row[Any] | None:
    """End one execution with one ``UPDATE ... RETURNING``, without a select first, where
    the ending needs nothing of the row that the statement cannot say: it is active (or
    queued), owned by ``worker_id`` if given, and has no outputs yet if the outcome brings
    some. The row as ``_ENDING_ROWS`` reads it, with the values written; None if the
    outcome is no ending or nothing matched (the select path then decides). A run that has
    no start time yet gets ``started_at`` (default: ``now``)."""
    status = as_status(outcome.status)
    if status not in ENDED:
        return None
    statement = _END_RETURNING[(worker_id is not None, bool(outcome.outputs))]
    params: dict[str, Any] = {
        "b_id": execution_id,
        "b_worker": worker_id,
        "status": status,
        "message": outcome.message,
        "error_kind": outcome.error_kind,
        "started_at": started_at or now,
        "ended_at": now,
        "outputs": outcome.outputs,
    }
    return session.connection().execute(statement, params).first()


def _sync_loaded(session: Session, updates: list[dict[str, Any]]) -> None:
    """Give executions loaded in this session the values just written (as the ORM's bulk
    update would), without marking them changed."""
    if not session.identity_map:
        return
    for values in updates:
        loaded = session.identity_map.get(identity_key(Execution, values["id"]))
        if loaded is not None:
            for name in _ENDED_COLUMNS:
                set_committed_value(loaded, name, values[name])


def finish(
    session: Session, execution_id: str, outcome: Outcome, *, worker_id: str | None = None
) -> bool:
    """End one active execution; False if it already ended (or another worker owns it)."""
    return bool(finish_many(session, [(execution_id, outcome)], worker_id=worker_id))


def finish_many(
    session: Session,
    endings: Sequence[tuple[str, Outcome]],
    *,
    worker_id: str | None = None,
    views: dict[str, dict[str, Any] | None] | None = None,
    started: Mapping[str, tuple[datetime, dict[str, Any]]] | None = None,
) -> list[str]:
    """End many active executions in this transaction; returns the ids that were ended.

    An execution that has already ended (ended executions are immutable), or that another
    worker now owns, is left as it is: a late ending lost a race (a cancel, the reaper).
    Each ending records ``executions.ended``.

    ``views``: for each id that is a key of it and is ended here, its ``execution_view`` as
    a read after the commit gives it (built from what was read and written, without reading
    the row again); the others stay None.

    ``started``: executions that start with their ending (a run reported once it ended
    elsewhere): id -> (when it started, its ``executions.started`` event row). The start
    time is written by the ending's update and the event recorded just before
    ``executions.ended``, in the same insert: no statement of their own.
    """
    if not endings:
        return []
    session.flush()  # what the statements read (on the connection: no ORM work per row)
    now = utcnow()
    # One ending (a run's, the usual case): one UPDATE ... RETURNING where the backend has
    # it and the ending needs nothing of the row first; else a select, then the update.
    started = started or {}
    written = None
    if len(endings) == 1 and session.get_bind().dialect.update_returning:
        execution_id, outcome = endings[0]
        start = started.get(execution_id)
        written = _end_returning(
            session, execution_id, outcome, worker_id, now, start[0] if start else None
        )
    if written is not None:
        rows = {written.id: written}
    else:
        rows = {
            row.id: row
            for row in session.connection().execute(
                _ENDING_ROWS, {"ids": [execution_id for execution_id, _ in endings]}
            )
        }
    slugs = {row.workspace_id: row.slug for row in rows.values()}
    updates: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    done: set[str] = set()  # an id listed twice ends once
    counted: list[tuple[str, str, float]] = []
    for execution_id, outcome in endings:
        row = rows.get(execution_id)
        if written is not None and row is not None:  # ended by the UPDATE: its new values
            status, started_at, message = as_status(row.status), row.started_at, row.message
            outputs = row.outputs or {}
        else:
            if row is None or is_ended(row.status) or execution_id in done:
                continue
            if worker_id is not None and row.worker_id != worker_id:
                continue
            status = transition(row.status, outcome.status)
            start = started.get(execution_id)
            started_at = row.started_at or (start[0] if start else now)
            message = outcome.message if outcome.message is not None else row.message
            outputs = {**(row.outputs or {}), **(outcome.outputs or {})}
        updates.append(
            {
                "id": execution_id,
                "status": status,
                "message": message,
                "outputs": outputs,
                "error_kind": outcome.error_kind,
                "started_at": started_at,
                "ended_at": now,
                "lease_expires_at": None,
            }
        )
        if execution_id in started:
            events.append(started[execution_id][1])
        events.append(
            event_row(
                row.workspace_id,
                slugs.get(row.workspace_id),
                "executions.ended",
                {
                    "id": execution_id,
                    "flow": row.flow_name,
                    "status": status,
                    "message": message,
                    "duration": (now - started_at).total_seconds(),
                    "errorKind": outcome.error_kind,
                },
                correlation_id=row.correlation_id,
                execution_id=execution_id,
                user_id=row.user_id,
                extra_source=execution_source(row.trigger, app=row.app),
            )
        )
        automation_row = automation_executed_row(
            row.workspace_id,
            slugs.get(row.workspace_id),
            execution_id,
            row.trigger,
            status=status,
            duration=(now - started_at).total_seconds(),
            outputs=outputs,
            correlation_id=row.correlation_id,
            user_id=row.user_id,
        )
        if automation_row is not None:
            events.append(automation_row)
        done.add(execution_id)
        if views is not None and execution_id in views:
            views[execution_id] = _ended_view(row, updates[-1])
        counted.append(
            (slugs.get(row.workspace_id) or "", status, (now - started_at).total_seconds())
        )
    if updates:
        metrics.count_ended(session, counted)
        if written is None:
            session.connection().execute(_END_UPDATE, [{"b_id": u["id"], **u} for u in updates])
        _sync_loaded(session, updates)
        record_rows(session, events)
        for ended in updates:
            notify.announce(session, notify.ENDED, ended["id"])
    return [u["id"] for u in updates]


def _ended_view(row: Row[Any], written: dict[str, Any]) -> dict[str, Any]:
    """The view of an execution just ended: its row (``_ENDING_ROWS``) and what was written."""
    fields = {k: v for k, v in row._mapping.items() if k != "slug"}
    fields.update((name, written[name]) for name in _ENDED_COLUMNS)
    fields["status"] = str(fields["status"])
    return execution_view(Execution(**fields), row.slug)


def reap_expired(session: Session) -> list[str]:
    """End every active execution whose worker stopped renewing its lease ("worker lost")."""
    expired = list(
        session.scalars(
            select(Execution)
            .where(Execution.status.in_(ACTIVE), Execution.lease_expires_at < utcnow())
            .with_for_update(skip_locked=True)
        )
    )
    finish_many(
        session,
        [
            (
                execution.id,
                Outcome(
                    ExecutionStatus.ERROR,
                    f"worker lost: worker {execution.worker_id} stopped renewing its lease",
                    error_kind="worker_lost",
                ),
            )
            for execution in expired
        ],
    )
    return [e.id for e in expired]


def queue_depth(session: Session) -> int:
    """How many executions wait to be claimed."""
    return (
        session.scalar(
            select(func.count()).where(
                Execution.status == ExecutionStatus.QUEUED, Execution.remote_config_id.is_(None)
            )
        )
        or 0
    )


def _workspaces(session: Session, ids: set[str]) -> dict[str, Workspace]:
    if not ids:
        return {}
    return {w.id: w for w in session.scalars(select(Workspace).where(Workspace.id.in_(ids)))}


def status_counts(
    session: Session, workspace_ids: Sequence[str], since: datetime
) -> dict[str, dict[str, int]]:
    """Executions created since ``since`` per workspace id and status (for the console)."""
    counts: dict[str, dict[str, int]] = {ws: {} for ws in workspace_ids}
    if not workspace_ids:
        return counts
    rows = session.execute(
        select(Execution.workspace_id, Execution.status, func.count())
        .where(Execution.workspace_id.in_(list(workspace_ids)), Execution.created_at >= since)
        .group_by(Execution.workspace_id, Execution.status)
    )
    for workspace_id, status, count in rows:
        counts[workspace_id][status] = int(count)
    return counts


def by_correlation(
    session: Session, correlation_id: str, workspace_ids: Sequence[str], *, limit: int = 200
) -> list[Execution]:
    """Executions of these workspaces that share a correlation id, oldest first."""
    if not workspace_ids:
        return []
    return list(
        session.scalars(
            select(Execution)
            .where(
                Execution.correlation_id == correlation_id,
                Execution.workspace_id.in_(list(workspace_ids)),
            )
            .order_by(Execution.created_at)
            .limit(limit)
        )
    )


def created_times(
    session: Session, workspace: Workspace, since: datetime, *, limit: int = 10_000
) -> list[datetime]:
    """When the newest ``limit`` executions created since ``since`` were created, newest first."""
    return list(
        session.scalars(
            select(Execution.created_at)
            .where(Execution.workspace_id == workspace.id, Execution.created_at >= since)
            .order_by(Execution.created_at.desc())
            .limit(limit)
        )
    )


def log_lines(
    session: Session, execution_id: str, *, after: int = 0, limit: int = 1000
) -> list[dict[str, Any]]:
    """Like ``get_logs`` + ``log_view``, read as plain rows (a page shows thousands at once)."""
    rows = session.execute(
        select(ExecutionLog.id, ExecutionLog.created_at, ExecutionLog.line)
        .where(ExecutionLog.execution_id == execution_id, ExecutionLog.id > after)
        .order_by(ExecutionLog.id)
        .limit(limit)
    )
    return [{"id": i, "created_at": format_optional(at), "line": line} for i, at, line in rows]


def descendants(
    session: Session, execution_id: str, *, limit: int = 200, depth: int = 6
) -> list[Execution]:
    """Children, grandchildren... of an execution (one query per level), at most ``limit``."""
    found: list[Execution] = []
    level = [execution_id]
    for _ in range(depth):
        if not level or len(found) >= limit:
            break
        rows = list(
            session.scalars(
                select(Execution)
                .where(Execution.parent_id.in_(level))
                .order_by(Execution.created_at)
                .limit(limit - len(found))
            )
        )
        found.extend(rows)
        level = [row.id for row in rows]
    return found
