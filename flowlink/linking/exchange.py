"""What a link carries: starting executions in the other workspace, and their state coming back.

Both ends run the same code. Each end:

- puts its messages in its outbox (``start_remote_execution``, ``cancel_mirrored``,
  and ``collect_changes``, which compares the executions the other end follows with what it
  was last told and queues an ``execution.update`` for each change), and
- applies the messages it receives (``apply_messages``), idempotently: an execution is
  started once per origin execution id, an update older than the last one applied is
  ignored, and log lines are applied once each (by their sequence number).

``LinkExecution`` rows say which executions concern a link and in which role (see its
docstring), and hold the bookkeeping that makes all of this idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from anyio import CapacityLimiter, to_thread
from sqlalchemy import and_, bindparam, literal, or_, select
from sqlalchemy.orm import Session

from flowlink.access.service import DEFAULT_IDENTITY_ROLE, identity_principal
from flowlink.errors import Conflict, FlowlinkError, Invalid, NotFound
from flowlink.events.service import event_row, record_row
from flowlink.execution_status import ACTIVE, ENDED, ExecutionStatus, Outcome, is_ended
from flowlink.executions import service as executions
from flowlink.linking import outbox
from flowlink.linking.messages import (
    AckMessage,
    CancelMessage,
    LinkMessage,
    LogLine,
    StartMessage,
    UpdateMessage,
)
from flowlink.linking.service import (
    CONTROLLED,
    CONTROLLING,
    delete_sync_config,
    direction_of,
    get_sync_config,
)
from flowlink.store import notify
from flowlink.store.engine import Store, run_core
from flowlink.store.models import (
    Execution,
    ExecutionLog,
    LinkExecution,
    LinkOutbox,
    SyncConfig,
    Workspace,
)
from flowlink.store.models import utcnow as now
from flowlink.timestamps import format_optional, parse_timestamp
from flowlink.workspaces.service import get_flow

log = logging.getLogger(__name__)

ORIGIN = "origin"  # here: a local execution that mirrors its run in the other workspace
TARGET = "target"  # here: a run started by the other end
SOURCE = "source"  # here: a local execution copied read-only to the other end (send-all)
MIRROR = "mirror"  # here: such a read-only copy of an execution of the other workspace
LOG_LINES_PER_UPDATE = 1000
UPDATES_PER_COLLECT = 500
TRACK_PER_COLLECT = 500
SEND_ALL_MARGIN = timedelta(minutes=5)
START_GRACE = timedelta(milliseconds=200)
_CONFIGS_KEY = "flowlink_link_configs"  # session.info: sync configs read in this transaction


@dataclass(frozen=True)
class RemoteStart:
    """What to start in the other workspace."""

    flow: str
    inputs: dict[str, Any] | None = None
    use_remote_flow: bool = False
    max_runtime: float | None = None


def _follow(
    config: SyncConfig,
    role: str,
    execution_id: str,
    origin_id: str,
    status: ExecutionStatus | None,
) -> LinkExecution:
    """A new row saying that an execution concerns this link, in this role."""
    return LinkExecution(
        sync_config_id=config.id,
        role=role,
        execution_id=execution_id,
        origin_execution_id=origin_id,
        revision=0,
        status=status,
        log_mark=0,
        done=False,
        created_at=now(),
    )


# --- the controlling side: starting and cancelling remote executions ----------------------


def _sync_config(session: Session, workspace: Workspace, name: str) -> SyncConfig:
    """``get_sync_config``, once per transaction: a batch of starts through one link makes
    one query, and its rows are flushed together at the commit instead of one by one."""
    known: dict[tuple[str, str], SyncConfig] = session.info.setdefault(_CONFIGS_KEY, {})
    config = known.get((workspace.id, name))
    if config is None:
        config = known[(workspace.id, name)] = get_sync_config(session, workspace, name)
    return config


def prepare_remote_starts(session: Session, workspace: Workspace, names: Iterable[str]) -> None:
    """Read the sync configs a batch of remote starts goes through, in one query, before the
    batch adds rows: each start then finds its link without a query (a query per start would
    also flush the rows of the starts before it, a round trip each on PostgreSQL)."""
    known: dict[tuple[str, str], SyncConfig] = session.info.setdefault(_CONFIGS_KEY, {})
    wanted = sorted({name for name in names if (workspace.id, name) not in known})
    for part in range(0, len(wanted), 1000):
        for config in session.scalars(
            select(SyncConfig).where(
                SyncConfig.workspace_id == workspace.id,
                SyncConfig.name.in_(wanted[part : part + 1000]),
            )
        ):
            known[(workspace.id, config.name)] = config


def start_remote_execution(
    session: Session,
    workspace: Workspace,
    config_name: str,
    start: RemoteStart,
    *,
    parent: Execution | None = None,
    correlation_id: str | None = None,
    user_id: str | None = None,
    trigger: dict[str, Any] | None = None,
    principal: dict[str, Any] | None = None,
    default_max_runtime: float = 3600.0,
    http: dict[str, Any] | None = None,
) -> Execution:
    """Start a flow in the linked workspace; returns the local execution that mirrors it.

    The script of the local flow ``start.flow`` is sent along, unless ``use_remote_flow``
    asks the other workspace to run its own flow of that name.
    """
    try:
        config = _sync_config(session, workspace, config_name)
    except NotFound:
        raise NotFound(
            f"no workspace link named {config_name!r} in workspace {workspace.slug!r}",
            details={"field": "remote", "sync_config": config_name},
        ) from None
    if not config.enabled:
        raise Conflict(f"the link {config_name!r} is disabled", details={"field": "remote"})
    if direction_of(config) != CONTROLLING:
        raise Invalid(
            f"the link {config_name!r} is controlled by the other workspace: it cannot start"
            " executions there (bidirectional control needs a second link)",
            details={"field": "remote"},
        )
    # Its rows go to the store with the transaction's others at the commit (a batch of
    # starts is flushed at once): the flow lookup below needs none of them.
    with session.no_autoflush:
        execution = executions.create_execution(
            session,
            workspace,
            flow_name=start.flow,
            script="" if start.use_remote_flow else None,
            inputs=start.inputs,
            parent=parent,
            correlation_id=correlation_id,
            user_id=user_id,
            trigger={
                **(trigger or {"type": "api"}),
                "remote": {"syncConfig": config.name, "useRemoteFlow": start.use_remote_flow},
            },
            max_runtime=start.max_runtime,
            default_max_runtime=default_max_runtime,
            principal=principal,
            remote_config_id=config.id,
            http=http,
        )
        session.add(_follow(config, ORIGIN, execution.id, execution.id, ExecutionStatus.QUEUED))
        outbox.enqueue(
            session,
            config.id,
            StartMessage.new(
                origin_execution_id=execution.id,
                origin_workspace=workspace.slug,
                flow=start.flow,
                script=None if start.use_remote_flow else execution.script,
                use_remote_flow=start.use_remote_flow,
                inputs=execution.inputs or {},
                correlation_id=execution.correlation_id,
                max_runtime=start.max_runtime,
                **({"traceparent": execution.traceparent} if execution.traceparent else {}),
            ).wire(),
        )
    return execution


def cancel_mirrored(session: Session, execution: Execution, reason: str) -> None:
    """Cancel an execution that runs in a linked workspace: at once here, and over there.

    A read-only copy (send-all) cannot be cancelled here: it belongs to the other workspace.
    """
    link = session.scalar(
        select(LinkExecution).where(
            LinkExecution.execution_id == execution.id,
            LinkExecution.sync_config_id == execution.remote_config_id,
        )
    )
    if link is not None and link.role == MIRROR:
        raise Conflict(
            f"execution {execution.id} is a read-only copy of an execution of a linked"
            " workspace; cancel it there",
            details={"mirrored": True},
        )
    if link is not None:
        outbox.enqueue(
            session,
            link.sync_config_id,
            CancelMessage.new(origin_execution_id=link.origin_execution_id, reason=reason).wire(),
        )
    cancelled = Outcome(ExecutionStatus.CANCELLED, reason, error_kind="cancelled")
    executions.finish_many(session, [(execution.id, cancelled)])


# --- applying what the other end sends ------------------------------------------------------


def apply_messages(
    session: Session,
    config: SyncConfig,
    workspace: Workspace,
    messages: Sequence[LinkMessage],
    *,
    default_max_runtime: float = 3600.0,
    started: list[str] | None = None,
) -> list[str]:
    """Act on validated messages from the other end; returns the ids to ack.

    Every message is applied idempotently, so a redelivered one changes nothing.
    ``started``: gets the ids of the executions the starts among them created.
    """
    received: list[str] = []
    endings: list[tuple[str, Outcome]] = []  # recorded together, at the end
    # runs that start with their ending: written by it (see ``finish_many``)
    started_runs: dict[str, tuple[datetime, dict[str, Any]]] = {}
    links = _Links.load(session, config, messages)
    followed = len(links.rows)
    for message in messages:
        if isinstance(message, AckMessage):
            outbox.acknowledge(session, config.id, message.ids)
            continue
        if isinstance(message, StartMessage):
            execution_id = _apply_start(
                session, config, workspace, message, links, default_max_runtime
            )
            if execution_id is not None and started is not None:
                started.append(execution_id)
        elif isinstance(message, UpdateMessage):
            _apply_update(session, config, workspace, message, links, endings, started_runs)
        else:
            _apply_cancel(session, config, message, links)
        received.append(message.id)
    executions.finish_many(session, endings, started=started_runs)
    if len(links.rows) > followed:
        # The link follows a new run: its held polls and sender look again (and listen to
        # the workspace's executions). Updates and acks change nothing they follow, so they
        # wake nobody: a controller's sender is not woken by every update it applies.
        notify.announce(session, notify.LINK, config.id)
    return received


class _Links:
    """The link rows (and their executions) an envelope's messages refer to, loaded at once.

    One query for all messages instead of two per message; rows are locked for the
    transaction, so concurrent exchanges of one link apply a message once.
    """

    def __init__(
        self, rows: dict[tuple[str, str], LinkExecution], executions: dict[str, Execution]
    ) -> None:
        self.rows = rows
        # Held here: the session's identity map holds its objects weakly, so a row loaded
        # and dropped could be gone (and queried again, one by one) by the time it is used.
        self.executions = executions

    @classmethod
    def load(cls, session: Session, config: SyncConfig, messages: Sequence[LinkMessage]) -> _Links:
        origin_ids = sorted(
            {m.origin_execution_id for m in messages if not isinstance(m, AckMessage)}
        )
        rows: dict[tuple[str, str], LinkExecution] = {}
        for start in range(0, len(origin_ids), 500):
            for link in session.scalars(
                select(LinkExecution)
                .where(
                    LinkExecution.sync_config_id == config.id,
                    LinkExecution.origin_execution_id.in_(origin_ids[start : start + 500]),
                )
                .with_for_update()
            ):
                rows[(link.role, link.origin_execution_id)] = link
        execution_ids = [link.execution_id for link in rows.values()]
        executions: dict[str, Execution] = {}
        for start in range(0, len(execution_ids), 500):
            for execution in session.scalars(
                select(Execution)
                .where(Execution.id.in_(execution_ids[start : start + 500]))
                .with_for_update()
            ):
                executions[execution.id] = execution
        return cls(rows, executions)

    def execution(self, session: Session, link: LinkExecution) -> Execution | None:
        """The execution of a link row (loaded and locked with it; else read now)."""
        found = self.executions.get(link.execution_id)
        return found if found is not None else session.get(Execution, link.execution_id)

    def get(self, role: str, origin_id: str) -> LinkExecution | None:
        """The row of this role for an origin execution, if there is one."""
        return self.rows.get((role, origin_id))

    def add(self, session: Session, link: LinkExecution) -> LinkExecution:
        """Record a new row (in the session and here)."""
        session.add(link)
        self.rows[(link.role, link.origin_execution_id)] = link
        return link


def _refuse_start(
    session: Session, config: SyncConfig, message: StartMessage, why: str, kind: str
) -> None:
    """Answer a start that cannot be done with an update that ends it as an error."""
    outbox.enqueue(
        session,
        config.id,
        UpdateMessage.new(
            origin_execution_id=message.origin_execution_id,
            revision=1,
            status=ExecutionStatus.ERROR,
            message=why,
            error_kind=kind,
            ended_at=format_optional(now()),
        ).wire(),
    )


def _identity(config: SyncConfig, workspace: Workspace) -> dict[str, Any]:
    role = config.role or DEFAULT_IDENTITY_ROLE
    return identity_principal(
        "sync_config", f"{workspace.slug}/{config.name}", workspace, role=role
    ).describe()


def _apply_start(
    session: Session,
    config: SyncConfig,
    workspace: Workspace,
    message: StartMessage,
    links: _Links,
    default_max_runtime: float,
) -> str | None:
    """Start the run a start message asks for; returns its execution's id (None: refused or
    started before)."""
    origin_id = message.origin_execution_id
    if links.get(TARGET, origin_id) is not None:
        return None  # started before: this is a redelivery
    if direction_of(config) != CONTROLLED:
        _refuse_start(
            session,
            config,
            message,
            f"refused by workspace {workspace.slug!r}: its end of the link ({config.name!r}) is"
            " the controlling one, so it does not take executions from this link",
            "refused",
        )
        return None
    flow, use_remote_flow, script = message.flow, message.use_remote_flow, message.script
    try:
        # Everything is checked before anything is added, so a refusal leaves no trace.
        if use_remote_flow:
            get_flow(session, workspace, flow)  # NotFound names the flow and workspace
        elif not isinstance(script, str):
            raise Invalid("execution.start: script is required unless use_remote_flow")
        execution = executions.create_execution(
            session,
            workspace,
            flow_name=flow,
            script=None if use_remote_flow else script,
            inputs=message.inputs,
            correlation_id=message.correlation_id,
            trigger={
                "type": "link",
                "syncConfig": config.name,
                "originExecutionId": origin_id,
                "originWorkspace": message.origin_workspace,
                "useRemoteFlow": use_remote_flow,
            },
            max_runtime=message.max_runtime,
            default_max_runtime=default_max_runtime,
            principal=_identity(config, workspace),
            traceparent=message.traceparent,
        )
    except FlowlinkError as error:
        kind = "not_found" if isinstance(error, NotFound) else "invalid"
        _refuse_start(session, config, message, error.message, kind)
        return None
    if use_remote_flow:
        execution.flow_id = None  # the run shows the script; it is not one of our flows
    # The other end knows it is queued: the first update goes out when it starts.
    links.add(session, _follow(config, TARGET, execution.id, origin_id, ExecutionStatus.QUEUED))
    return execution.id


def _mirror_copy(
    session: Session,
    config: SyncConfig,
    workspace: Workspace,
    message: UpdateMessage,
    links: _Links,
) -> LinkExecution | None:
    """The read-only copy of an execution of the other workspace, made on its first update."""
    if direction_of(config) != CONTROLLED:
        return None  # only the controlled end receives copies
    origin_id = message.origin_execution_id
    execution = executions.create_execution(
        session,
        workspace,
        flow_name=message.flow or "script",
        script=message.script or "",
        inputs=message.inputs or {},
        correlation_id=message.correlation_id,
        trigger={"type": "mirror", "syncConfig": config.name, "originExecutionId": origin_id},
        principal=_identity(config, workspace),
        remote_config_id=config.id,
    )
    mirror = _follow(config, MIRROR, execution.id, origin_id, ExecutionStatus.QUEUED)
    return links.add(session, mirror)


def _apply_update(
    session: Session,
    config: SyncConfig,
    workspace: Workspace,
    message: UpdateMessage,
    links: _Links,
    endings: list[tuple[str, Outcome]],
    started_runs: dict[str, tuple[datetime, dict[str, Any]]],
) -> None:
    origin_id = message.origin_execution_id
    if message.mirror:
        link = links.get(MIRROR, origin_id) or _mirror_copy(
            session, config, workspace, message, links
        )
    else:
        link = links.get(ORIGIN, origin_id)
    if link is None or message.revision <= link.revision:
        return  # unknown here, or older than what we have
    execution = links.execution(session, link)  # loaded and locked with the link rows
    if execution is None:
        return
    lines = [entry for entry in message.logs or () if entry.seq > link.log_mark]
    if lines:
        executions.append_logs(session, execution.id, [entry.line for entry in lines])
        link.log_mark = max(entry.seq for entry in lines)
    if message.script and not execution.script:
        execution.script = message.script
    status = message.status
    link.revision = message.revision
    link.status = status
    if is_ended(execution.status):
        link.done = True  # ended executions are immutable: a late update moves nothing
        return
    starts = execution.status == ExecutionStatus.QUEUED and (
        status in ACTIVE or bool(message.started_at)
    )
    if status in ENDED:
        if starts:  # started and ended over there: its ending writes both (one update)
            started_runs[execution.id] = (
                _start_time(message),
                _started_event(config, workspace, execution),
            )
        outcome = Outcome(status, message.message, message.outputs or {}, message.error_kind)
        endings.append((execution.id, outcome))
        link.done = True
        return
    if starts:
        _mark_started(session, config, workspace, execution, message)
    if message.outputs:
        execution.outputs = {**(execution.outputs or {}), **message.outputs}
    if message.message is not None:
        execution.message = message.message
    if status in ACTIVE and execution.status != status:
        executions.set_status(execution, status)


def _parse_time(value: str | None) -> datetime | None:
    try:
        return parse_timestamp(str(value)) if value else None
    except ValueError:
        return None


def _start_time(message: UpdateMessage) -> datetime:
    """When the mirror's run started, on this server's clock: now, less the run's remote
    duration if the update reports it ended."""
    started, ended = _parse_time(message.started_at), _parse_time(message.ended_at)
    at = now()
    if started and ended and ended >= started:
        at -= ended - started
    return at


def _started_event(
    config: SyncConfig, workspace: Workspace, execution: Execution
) -> dict[str, Any]:
    """The ``executions.started`` event row of a mirror whose run started over there."""
    return event_row(
        workspace.id,
        workspace.slug,
        "executions.started",
        {"id": execution.id, "flow": execution.flow_name, "worker": f"link:{config.name}"},
        correlation_id=execution.correlation_id,
        execution_id=execution.id,
        user_id=execution.user_id,
        extra_source=executions.execution_source(execution.trigger),
    )


def _mark_started(
    session: Session,
    config: SyncConfig,
    workspace: Workspace,
    execution: Execution,
    message: UpdateMessage,
) -> None:
    """The mirror's run has started over there (and goes on: a run that also ended is
    started by its ending, ``finish_many``'s ``started``)."""
    execution.started_at = _start_time(message)
    executions.set_status(execution, ExecutionStatus.RUNNING)
    record_row(session, _started_event(config, workspace, execution))


def _apply_cancel(
    session: Session, config: SyncConfig, message: CancelMessage, links: _Links
) -> None:
    link = links.get(TARGET, message.origin_execution_id)
    if link is None:
        return
    execution = links.execution(session, link)
    if execution is None or is_ended(execution.status):
        return
    reason = message.reason or f"cancelled through the link {config.name!r}"
    executions.request_cancel(session, execution, reason=reason, cancel_remote=cancel_mirrored)


# --- reporting changes to the other end -----------------------------------------------------


def _sends_all(config: SyncConfig) -> bool:
    return (
        config.send_all_executions
        and config.send_all_executions_meaning in (None, "mirror")
        and direction_of(config) == CONTROLLING
    )


def _untracked_query(config: SyncConfig, limit: int) -> Any:
    """Executions of the workspace not yet copied to the other end, oldest first.

    Only those created after the last one tracked (less a margin for transactions that
    committed late) are looked at, so a long history is scanned once, not on every exchange.
    """
    tracked = select(LinkExecution.id).where(
        LinkExecution.sync_config_id == config.id, LinkExecution.execution_id == Execution.id
    )
    query = select(Execution.id, Execution.created_at).where(
        Execution.workspace_id == config.workspace_id,
        or_(Execution.remote_config_id.is_(None), Execution.remote_config_id != config.id),
        ~tracked.exists(),
    )
    mark = (config.state or {}).get("send_all_mark")
    if mark:
        query = query.where(Execution.created_at >= datetime.fromisoformat(mark) - SEND_ALL_MARGIN)
    return query.order_by(Execution.created_at).limit(limit)


def _track_all(session: Session, config: SyncConfig) -> int:
    """Follow executions of this workspace not yet copied to the other end (send-all)."""
    new = list(session.execute(_untracked_query(config, TRACK_PER_COLLECT)))
    session.add_all(
        _follow(config, SOURCE, execution_id, execution_id, None) for execution_id, _ in new
    )
    if new:
        config.state = {**(config.state or {}), "send_all_mark": new[-1][1].isoformat()}
    return len(new)


def _status_moved(settled: Any) -> Any:
    """The status differs from what was sent; a fresh start waits until ``settled``.

    A run that ends within ``START_GRACE`` of starting is reported once, with its end,
    instead of as "running" and then as ended: half the messages for short runs.
    """
    return or_(
        LinkExecution.status.is_(None),
        and_(
            LinkExecution.status != Execution.status,
            or_(Execution.status.not_in(ACTIVE), Execution.started_at <= settled),
        ),
    )


# Built once: this runs on every wake-up of a link, so it must not be rebuilt each time.
# The roles a link follows, as two plain parameters: an IN of values is expanded on every
# run of the statement, which costs more than the statement on a renewed poll.
_FOLLOWED = LinkExecution.role.in_([literal(TARGET), literal(SOURCE)])
_ANY_CHANGE = (
    select(LinkExecution.id)
    .join(Execution, Execution.id == LinkExecution.execution_id)
    .where(
        LinkExecution.sync_config_id == bindparam("config_id"),
        _FOLLOWED,
        LinkExecution.done.is_(False),
        or_(
            _status_moved(bindparam("settled")),
            select(ExecutionLog.id)
            .where(
                ExecutionLog.execution_id == LinkExecution.execution_id,
                ExecutionLog.id > LinkExecution.log_mark,
            )
            .exists(),
        ),
    )
    .limit(1)
)


def has_changes(session: Session, config: SyncConfig) -> bool:
    """Whether ``collect_changes`` would queue anything (a cheap read, no locks)."""
    settled = now() - START_GRACE
    if run_core(session, _ANY_CHANGE, {"config_id": config.id, "settled": settled}).first():
        return True
    return _sends_all(config) and session.execute(_untracked_query(config, 1)).first() is not None


def _changed(
    session: Session, config: SyncConfig, *, limit: int, lock: bool
) -> list[tuple[LinkExecution, Execution]]:
    """Followed executions whose status or logs moved past what the other end was told.

    Both tests run in SQL (status differs; a log line past the mark exists), so a link
    following thousands of executions costs two indexed queries, not a scan in Python.
    """
    base = (
        select(LinkExecution, Execution)
        .join(Execution, Execution.id == LinkExecution.execution_id)
        .where(
            LinkExecution.sync_config_id == config.id,
            LinkExecution.role.in_((TARGET, SOURCE)),
            LinkExecution.done.is_(False),
        )
        .order_by(LinkExecution.id)
        .limit(limit)
    )
    new_logs = (
        select(ExecutionLog.id)
        .where(
            ExecutionLog.execution_id == LinkExecution.execution_id,
            ExecutionLog.id > LinkExecution.log_mark,
        )
        .exists()
    )
    found: dict[int, tuple[LinkExecution, Execution]] = {}
    for condition in (
        _status_moved(now() - START_GRACE),
        new_logs,
    ):
        query = base.where(condition)
        if lock:
            query = query.with_for_update(of=LinkExecution)
        for link, execution in session.execute(query):
            found.setdefault(link.id, (link, execution))
        if len(found) >= limit:
            break
    return [found[key] for key in sorted(found)][:limit]


def collect_changes(session: Session, config: SyncConfig) -> int:
    """Queue an ``execution.update`` for every followed execution that changed; returns how many."""
    if _sends_all(config) and _track_all(session, config):
        session.flush()
    changed = _changed(session, config, limit=UPDATES_PER_COLLECT, lock=True)
    new_lines = _new_log_lines(session, {link.execution_id: link.log_mark for link, _ in changed})
    messages: list[dict[str, Any]] = []
    for link, execution in changed:
        lines = new_lines.get(execution.id, [])
        first = link.revision == 0
        fields: dict[str, Any] = {
            "origin_execution_id": link.origin_execution_id,
            "revision": link.revision + 1,
            "status": execution.status,
            "message": execution.message,
            "outputs": execution.outputs or {},
            "error_kind": execution.error_kind,
            "started_at": format_optional(execution.started_at),
            "ended_at": format_optional(execution.ended_at),
            "logs": [LogLine(seq=seq, line=line) for seq, line in lines],
        }
        if first:
            fields.update(
                flow=execution.flow_name,
                script=execution.script,
                inputs=execution.inputs or {},
                correlation_id=execution.correlation_id,
                created_at_origin=format_optional(execution.created_at),
            )
        if link.role == SOURCE:
            fields["mirror"] = True
        messages.append(UpdateMessage.new(**fields).wire())
        link.revision += 1
        link.status = execution.status
        if lines:
            link.log_mark = lines[-1][0]
        if is_ended(execution.status) and len(lines) < LOG_LINES_PER_UPDATE:
            link.done = True
    outbox.enqueue_many(session, config.id, messages)
    return len(changed)


def _new_log_lines(session: Session, marks: dict[str, int]) -> dict[str, list[tuple[int, str]]]:
    """Log lines past each execution's mark (at most ``LOG_LINES_PER_UPDATE`` each), at once."""
    lines: dict[str, list[tuple[int, str]]] = {}
    ids = list(marks)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(ExecutionLog.execution_id, ExecutionLog.id, ExecutionLog.line)
            .where(
                ExecutionLog.execution_id.in_(chunk),
                ExecutionLog.id > min(marks[i] for i in chunk),
            )
            .order_by(ExecutionLog.id)
        )
        for execution_id, seq, line in rows:
            mine = lines.setdefault(execution_id, [])
            if seq > marks[execution_id] and len(mine) < LOG_LINES_PER_UPDATE:
                mine.append((seq, line))
    return lines


def follows_and_outgoing(
    session: Session, config: SyncConfig, limit: int
) -> tuple[bool, list[dict[str, Any]]]:
    """Whether the link follows a run, and its outbox (this end's changes queued first), in
    the write transaction of an answered exchange: whether it follows a run, whether one
    changed and the outbox are one statement (``_LOOK``) unless something changed (or the
    link sends all)."""
    if _sends_all(config):
        follows, changed = True, has_changes(session, config)
    else:  # one statement, which reads the outbox too: most answers have nothing to collect
        looked = _look(session, config.id, limit)
        if looked is None:
            return False, []
        _, follows, changed, messages = looked
        if not changed:
            return follows, messages
    if changed:
        collect_changes(session, config)
    return follows, outbox.pending(session, config.id, limit)


def pending_messages(store: Store, config_id: str, limit: int) -> list[dict[str, Any]]:
    """This end's messages for the other end; takes the write lock only when there is news.

    Raises ``NotFound`` if the sync config is gone.
    """
    with store.read() as session:
        config = session.get(SyncConfig, config_id)
        if config is None:
            raise NotFound(f"sync config {config_id} was deleted")
        if not has_changes(session, config):
            return outbox.pending(session, config_id, limit)
    with store.write() as session:
        config = session.get(SyncConfig, config_id)
        if config is None:
            raise NotFound(f"sync config {config_id} was deleted")
        collect_changes(session, config)  # the read above found changes
        return outbox.pending(session, config_id, limit)


def follows_changes(session: Session, config: SyncConfig) -> bool:
    """Whether a change of an execution of this workspace may concern the link.

    True while it follows an unfinished run (``target``/``source``) or copies every
    execution (send-all). A link that follows nothing is woken only by its outbox.
    """
    if _sends_all(config):
        return True
    return run_core(session, _OPEN_ROW, {"config_id": config.id}).first() is not None


# Built once, like ``_ANY_CHANGE``: whether the link follows an unfinished run.
_OPEN_ROW = (
    select(LinkExecution.id)
    .where(
        LinkExecution.sync_config_id == bindparam("config_id"),
        _FOLLOWED,
        LinkExecution.done.is_(False),
    )
    .limit(1)
)
# A look in one statement: the config's send-all flag (a send-all link takes the general
# path), whether the link follows a run and whether one changed, and its outbox (the oldest
# ``limit`` messages, as ``outbox.pending``): a row per message, or one row without one.
# What most looks need, in one round trip: a look that finds nothing changed is done.
_LOOK = (
    select(
        SyncConfig.send_all_executions,
        _OPEN_ROW.exists(),
        _ANY_CHANGE.exists(),
        LinkOutbox.body,
    )
    .select_from(SyncConfig)
    .outerjoin(LinkOutbox, LinkOutbox.sync_config_id == SyncConfig.id)
    .where(SyncConfig.id == bindparam("config_id"))
    .order_by(LinkOutbox.id)
    .limit(bindparam("limit"))
)


def _look(
    session: Session, config_id: str, limit: int
) -> tuple[bool, bool, bool, list[Any]] | None:
    """``_LOOK``: (send-all flag, follows a run, one changed, the outbox's messages); None if
    the sync config is gone."""
    params = {"config_id": config_id, "settled": now() - START_GRACE, "limit": limit}
    rows = run_core(session, _LOOK, params).all()
    if not rows:
        return None
    send_all, follows, changed, _ = rows[0]
    messages = outbox.repaired(body for *_, body in rows if body is not None)
    return bool(send_all), bool(follows), bool(changed), messages


@dataclass(frozen=True)
class News:
    """What a look at a link's end found: its messages, and whether executions here matter.

    ``more``: changes were left for the next look (more than one collect takes).
    ``again``: look again after this many seconds even if no notification comes (messages
    were held back for a while).
    """

    messages: list[dict[str, Any]]
    follows: bool
    more: bool = False
    again: float | None = None


def look_for_news(store: Store, config_id: str, limit: int) -> News:
    """``pending_messages`` plus ``follows_changes``, for a held poll or a sender.

    One read when nothing changed (most looks), one write when something did. The read is
    one Core statement (the link's state and its outbox, ``_LOOK``) and loads no ORM object.
    """
    with store.read() as session:
        looked = _look(session, config_id, limit)
        if looked is None:
            raise NotFound(f"sync config {config_id} was deleted")
        send_all, follows, changed, messages = looked
        if send_all:  # rare: the general path (send-all decides by more than one flag)
            config = session.get(SyncConfig, config_id)
            if config is None:
                raise NotFound(f"sync config {config_id} was deleted")
            follows = follows_changes(session, config)
            changed = follows and has_changes(session, config)
        if not follows or not changed:
            return News(messages, bool(follows))
    with store.write() as session:
        config = session.get(SyncConfig, config_id)
        if config is None:
            raise NotFound(f"sync config {config_id} was deleted")
        collected = collect_changes(session, config)  # the read above found changes
        # What it queued is read below and sent by this look's caller: announced, it would
        # only wake another look of the link (a held poll, the caller's own waiter) to it.
        notify.withdraw(session, notify.LINK, config_id)
        more = collected >= UPDATES_PER_COLLECT
        return News(outbox.pending(session, config_id, limit), True, more)


def news_interests(config_id: str, workspace_id: str, follows: bool) -> notify.Interests:
    """The notifications that may bring a link's end something to send.

    Its outbox (``LINK``), and when it follows executions, any execution change or log line
    of its workspace (a run's start, end and logs are collected from the executions).
    """
    if not follows:
        return {notify.LINK: {config_id}}
    return {
        notify.LINK: {config_id},
        notify.EVENTS: {workspace_id},
        notify.LOGS: {workspace_id},
    }


async def wait_for_news(
    store: Store,
    config_id: str,
    workspace_id: str,
    timeout: float,
    *,
    stopping: Callable[[], bool] = lambda: False,
    limit: int,
    waiter: notify.AsyncWaiter | None = None,
    first: News | None = None,
    limiter: CapacityLimiter | None = None,
    look: Callable[[], News] | None = None,
    skip: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Wait on the event loop, holding no thread, until this end has messages for the other.

    It looks at the store only when a notification concerns this link (on PostgreSQL
    also from other server processes), never on a timer while nothing changes. A run that
    just started is reported after ``START_GRACE``: after a wake-up that found nothing,
    it looks once more when that grace is over. Returns [] on the timeout (a poll that runs
    out with nothing heard does not look again) or ``stopping``.

    ``waiter`` and ``first``: a waiter already registered for this link before the caller
    looked, and what that look found; the wait then starts without looking again.
    ``limiter``: the thread hops' limiter (default: the pool the API shares).
    ``look``: how to look (default ``look_for_news``), in a thread hop: a caller may do more
    in the same hop with what the look found (the answering end signs its answer there).
    ``skip``: asked on the event loop before each look; true skips it (no thread hop) as if
    it found nothing while the link follows a run (another answer takes the news meanwhile).
    """
    if waiter is None:
        with store.notifier.waiter(news_interests(config_id, workspace_id, True)) as own:
            return await wait_for_news(
                store,
                config_id,
                workspace_id,
                timeout,
                stopping=stopping,
                limit=limit,
                waiter=own,
                limiter=limiter,
                look=look,
                skip=skip,
            )
    deadline = time.monotonic() + timeout
    grace = START_GRACE.total_seconds() + 0.05
    recheck = False
    news = first
    while True:
        listened = notify.EVENTS in waiter.interests  # during the look just made
        if news is None and skip is not None and skip():
            news = News([], True)
        if news is None:
            if look is None:
                news = await to_thread.run_sync(
                    look_for_news, store, config_id, limit, limiter=limiter
                )
            else:
                news = await to_thread.run_sync(look, limiter=limiter)
        if news.messages:
            return news.messages
        waiter.set_interests(news_interests(config_id, workspace_id, news.follows))
        if news.follows and not listened:
            # The link follows a run now, and its changes were not listened to while the
            # look ran: a run that ended meanwhile announced nothing this waiter heard.
            news = None
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0 or stopping():
            return []
        wait = min(remaining, grace) if recheck else remaining
        if news.again is not None:
            wait = min(wait, news.again)
        woken = await waiter.wait(wait)
        if stopping():
            return []
        if not woken and not recheck and wait >= remaining:
            # Ran out with nothing heard: nothing changed since the last look (a change
            # announces itself), and the other end's next exchange looks in its transaction.
            # Judged by the wait asked for, not the clock: uvloop may fire a timer a little early.
            return []
        recheck = bool(woken) and news.follows
        if notify.LINK in woken and not news.follows:
            # Maybe a run to follow now: listen to executions before looking (see above).
            waiter.set_interests(news_interests(config_id, workspace_id, True))
        news = None


def end_link_executions(session: Session, config: SyncConfig, reason: str) -> int:
    """End the local mirrors of a link that goes away (they would never hear back)."""
    open_ids = list(
        session.scalars(
            select(Execution.id)
            .join(LinkExecution, LinkExecution.execution_id == Execution.id)
            .where(
                LinkExecution.sync_config_id == config.id,
                LinkExecution.role.in_((ORIGIN, MIRROR)),
                Execution.status.not_in(ENDED),
            )
        )
    )
    outcome = Outcome(ExecutionStatus.ERROR, reason, error_kind="link_removed")
    return len(executions.finish_many(session, [(i, outcome) for i in open_ids]))


def delete_link(session: Session, workspace: Workspace, name: str) -> None:
    """Delete a sync config; its unfinished mirrored executions end as errors first."""
    config = get_sync_config(session, workspace, name)
    end_link_executions(session, config, f"the link {name!r} was deleted")
    delete_sync_config(session, workspace, name)


def role_of_link(session: Session, execution: Execution) -> dict[str, Any] | None:
    """How an execution relates to a link (for its detail view), or None."""
    row = session.execute(
        select(LinkExecution.role, LinkExecution.origin_execution_id, SyncConfig.name)
        .join(SyncConfig, SyncConfig.id == LinkExecution.sync_config_id)
        .where(
            LinkExecution.execution_id == execution.id,
            LinkExecution.role.in_((ORIGIN, TARGET, MIRROR)),
        )
        .limit(1)
    ).first()
    if row is None:
        return None
    role, origin_id, name = row
    return {"sync_config": name, "role": role, "origin_execution_id": origin_id}
