"""Starting an execution here and waiting for its end.

The API, webhooks, pages and a flow's ``flow_api`` all start and wait through these; a start
that may go through a link is ``linking.starts.start_execution``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypedDict, TypeVar, Unpack

from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.errors import Invalid
from flowlink.execution_status import ExecutionStatus, is_ended
from flowlink.executions import service as executions
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import Execution, Workspace

View = TypeVar("View", bound=Mapping[str, Any])


@dataclass(frozen=True)
class StartRequest:
    """What to run: a stored flow, an ad-hoc script, or a flow in a linked workspace."""

    flow: str | None = None
    inputs: dict[str, Any] | None = None
    script: str | None = None
    name: str | None = None
    max_runtime: float | None = None
    remote: str | None = None
    use_remote_flow: bool = False

    @property
    def flow_name(self) -> str | None:
        """The name the execution shows (an ad-hoc script's ``name``, else the flow)."""
        return self.flow if self.script is None else (self.name or self.flow)


class StartedBy(TypedDict, total=False):
    """Where a start comes from: what ``start_local`` and a start through a link share."""

    parent: Execution | None
    user_id: str | None
    trigger: dict[str, Any] | None
    principal: dict[str, Any] | None
    http: dict[str, Any] | None


def start_local(
    session: Session,
    workspace: Workspace,
    request: StartRequest,
    *,
    default_max_runtime: float,
    **by: Unpack[StartedBy],
) -> Execution:
    """Queue the execution in this workspace (a start through a link is
    ``linking.starts.start_execution``)."""
    if request.use_remote_flow:
        raise Invalid("use_remote_flow: only with remote", details={"field": "use_remote_flow"})
    return executions.create_execution(
        session,
        workspace,
        flow_name=request.flow_name,
        script=request.script,
        inputs=request.inputs,
        max_runtime=request.max_runtime,
        default_max_runtime=default_max_runtime,
        **by,
    )


def ended(store: Store, execution_id: str) -> bool:
    """Whether the execution ended (or is gone)."""
    with store.read() as session:
        status = executions.statuses(session, [execution_id]).get(execution_id)
        return status is None or is_ended(status)


def outcome(store: Store, execution_id: str) -> tuple[str, Any, str | None]:
    """Status, outputs and message of an execution (``error`` when it is gone)."""
    with store.read() as session:
        row = session.execute(
            select(Execution.status, Execution.outputs, Execution.message).where(
                Execution.id == execution_id
            )
        ).first()
    if row is None:
        return ExecutionStatus.ERROR, None, "the execution is gone"
    return row[0], row[1], row[2]


async def wait_for_end(store: Store, execution_id: str, timeout: float) -> bool:
    """Wait (on the event loop, holding no thread) until the execution ended or ``timeout``;
    whether it ended. The store is read again only when this execution's end is announced
    (or an announcement names no execution: one from another process, or of many endings)."""

    def check() -> bool:
        return ended(store, execution_id)

    return await notify.wait_until(store.notifier, {notify.ENDED: {execution_id}}, check, timeout)


@contextmanager
def watching_ends(store: Store) -> Iterator[notify.AsyncWaiter]:
    """A waiter for execution ends, registered before the execution to wait for is created.

    Any end wakes it until ``wait_and_read`` narrows it to its execution; since it listened
    from before the execution existed, the wait needs no first look at the store.
    """
    with store.notifier.waiter({notify.ENDED: None}) as waiter:
        yield waiter


async def wait_and_read(
    store: Store,
    execution_id: str,
    timeout: float,
    read: Callable[[], View],
    *,
    watching: notify.AsyncWaiter,
) -> View:
    """Wait until the execution ended or ``timeout``, then return ``read()``: a view of the
    execution that has its ``status``.

    ``watching`` (``watching_ends``) listened from before the execution was created, so
    nothing is read before a wake-up; each wake-up reads the view and looks at its status,
    so an execution's end costs the waiting request one read, not two.
    """
    views: list[View] = []

    def check() -> bool:
        views.append(read())
        return is_ended(views[-1]["status"])

    await notify.wait_until(
        store.notifier,
        {notify.ENDED: {execution_id}},
        check,
        timeout,
        waiter=watching,
        checked=True,
    )
    return views[-1]  # ``checked``: the wait ends with a check, this is fresh
