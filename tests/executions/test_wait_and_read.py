"""A request that waits for an execution's end reads its view once when the end comes."""

from __future__ import annotations

import asyncio
from typing import Any

from flowlink.execution_status import ExecutionStatus, Outcome
from flowlink.executions import service as executions
from flowlink.executions.starts import wait_and_read, watching_ends
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import Execution, Workspace
from tests.executions.conftest import new_executions


def _reader(store: Store, execution_id: str, reads: list[str]) -> Any:
    def read() -> dict[str, Any]:
        with store.read() as session:
            row = session.get(Execution, execution_id)
            assert row is not None
            reads.append(row.status)
            return {"id": row.id, "status": row.status}

    return read


async def _waiting(
    store: Store, workspace: Workspace, watching: notify.AsyncWaiter, reads: list[str]
) -> tuple[str, asyncio.Task[dict[str, Any]]]:
    """A queued execution and a wait for its end (``reads`` notes its reads), which reads
    nothing before a wake-up."""
    execution_id = (await asyncio.to_thread(new_executions, store, workspace))[0]
    read = _reader(store, execution_id, reads)
    waiting = asyncio.create_task(wait_and_read(store, execution_id, 30.0, read, watching=watching))
    await asyncio.sleep(0.2)
    assert not waiting.done() and reads == []  # no look before a wake-up
    return execution_id, waiting


def test_the_end_is_read_once_with_the_view(store: Store, workspace: Workspace) -> None:
    reads: list[str] = []

    async def scenario() -> tuple[str, dict[str, Any]]:
        with watching_ends(store) as watching:
            execution_id, waiting = await _waiting(store, workspace, watching, reads)
            # Another execution's end does not wake this wait.
            other = (await asyncio.to_thread(new_executions, store, workspace))[0]
            await asyncio.to_thread(_finish, store, other, Outcome(ExecutionStatus.ERROR, "x"))
            await asyncio.sleep(0.1)
            assert not waiting.done() and reads == []
            done = Outcome(ExecutionStatus.SUCCESS, "done")
            await asyncio.to_thread(_finish, store, execution_id, done)
            return execution_id, await asyncio.wait_for(waiting, 30.0)

    execution_id, view = asyncio.run(scenario())
    assert view == {"id": execution_id, "status": "success"}
    assert reads == ["success"]  # the wake-up's check was the view: no second read


def test_a_timeout_is_read_afresh(store: Store, workspace: Workspace) -> None:
    reads: list[str] = []

    async def scenario() -> dict[str, Any]:
        with watching_ends(store) as watching:
            execution_id = (await asyncio.to_thread(new_executions, store, workspace))[0]
            read = _reader(store, execution_id, reads)
            return await wait_and_read(store, execution_id, 0.05, read, watching=watching)

    view = asyncio.run(scenario())
    assert view["status"] == "queued" and reads == ["queued"]  # timed out: read at the end


def test_a_wait_that_listened_before_the_start_reads_nothing_until_woken(
    store: Store, workspace: Workspace
) -> None:
    reads: list[str] = []

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        with watching_ends(store) as watching:
            execution_id, waiting = await _waiting(store, workspace, watching, reads)
            done = Outcome(ExecutionStatus.SUCCESS, "done")
            await asyncio.to_thread(_finish, store, execution_id, done)
            first = await asyncio.wait_for(waiting, 30.0)
        # An end between the start and the wait is not missed: it woke the watcher.
        with watching_ends(store) as watching:
            other = (await asyncio.to_thread(new_executions, store, workspace))[0]
            await asyncio.to_thread(_finish, store, other, Outcome(ExecutionStatus.ERROR, "x"))
            await asyncio.sleep(0.05)
            second = await asyncio.wait_for(
                wait_and_read(store, other, 30.0, _reader(store, other, reads), watching=watching),
                30.0,
            )
        return first, second

    first, second = asyncio.run(scenario())
    assert first["status"] == "success" and second["status"] == "error"
    assert reads == ["success", "error"]  # one read each, once ended


def _finish(store: Store, execution_id: str, outcome: Outcome) -> None:
    with store.write() as session:
        assert executions.finish_many(session, [(execution_id, outcome)])
