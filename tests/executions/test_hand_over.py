"""The worker's short cuts on both backends: executions handed over in the transaction that
queues them, a waited child that resumes its parent, no claims for freed slots alone."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from flowlink import assembly
from flowlink.execution_status import ExecutionStatus
from flowlink.executions import service as executions
from flowlink.executions.calls import AwaitedChild
from flowlink.executions.worker import Worker
from flowlink.store.engine import Store
from flowlink.store.models import Execution, Workspace
from flowlink.workspaces import service as workspaces
from tests.conftest import make_settings

QUICK = "def handler(system, this, inputs):\n    return this.success('ok')\n"
SLOW = "import time\n\ndef handler(system, this, inputs):\n    time.sleep(1.5)\n"
CHAIN = """def handler(system, this, inputs):
    for _ in range(inputs.get('children', 5)):
        this.flow(inputs.get('flow', 'quick'))
    return this.success('done')
"""


@pytest.fixture
def workspace(store: Store) -> Workspace:
    with store.write() as session:
        ws = workspaces.create_workspace(session, "hand-over")
        for name, script in (("quick", QUICK), ("slow", SLOW), ("chain", CHAIN)):
            workspaces.put_flow(session, ws, name, script)
        return ws


@pytest.fixture
def worker(store: Store, database_url: str) -> Iterator[Worker]:
    # A long poll interval: every claim the test sees was asked for, none is the fallback.
    started = Worker(
        store,
        make_settings(database_url, poll_interval=60.0, warm_runners=2),
        hooks=assembly.FLOW_HOOKS,
    )
    started.start()
    yield started
    started.stop(grace=5)


def _create(store: Store, workspace: Workspace, flow: str, inputs: dict[str, object]) -> str:
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        return executions.create_execution(session, ws, flow_name=flow, inputs=inputs).id


def _wait_ended(store: Store, execution_id: str, timeout: float = 60) -> Execution:
    deadline = time.monotonic() + timeout
    while True:
        with store.read() as session:
            execution = session.get(Execution, execution_id)
            assert execution is not None
            if execution.status in executions.ENDED:
                return execution
        assert time.monotonic() < deadline, f"{execution_id} did not end"
        time.sleep(0.05)


@pytest.fixture
def claims(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many executions each claim from the queue took, in order."""
    taken: list[int] = []
    real_claim = executions.claim

    def counting_claim(*args: object, **kwargs: object) -> list[executions.Claimed]:
        found = real_claim(*args, **kwargs)  # type: ignore[arg-type]
        taken.append(len(found))
        return found

    monkeypatch.setattr(executions, "claim", counting_claim)
    return taken


def test_new_execution_is_claimed_in_the_transaction_that_queues_it(
    store: Store, workspace: Workspace, worker: Worker, claims: list[int]
) -> None:
    _wait_ended(store, _create(store, workspace, "quick", {}))  # the queue is known empty
    execution_id = _create(store, workspace, "quick", {})
    with store.read() as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert execution.status != ExecutionStatus.QUEUED
        assert execution.worker_id == worker.id
    assert _wait_ended(store, execution_id).status == ExecutionStatus.SUCCESS
    assert sum(claims) == 0, claims  # neither was claimed from the queue


def test_parent_waits_while_its_child_runs_and_runs_again_after(
    store: Store, workspace: Workspace, worker: Worker
) -> None:
    parent_id = _create(store, workspace, "chain", {"children": 1, "flow": "slow"})
    deadline = time.monotonic() + 30
    while True:
        with store.read() as session:
            children = executions.child_ids(session, parent_id)
            if children:
                child = session.get(Execution, children[0])
                assert child is not None
                if child.status == ExecutionStatus.RUNNING:
                    break
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.02)
    # Read after the child was seen running (on PostgreSQL each statement of a read sees the
    # latest commits, so a parent read before the child's creation committed would be stale).
    with store.read() as session:
        parent = session.get(Execution, parent_id)
        assert parent is not None
        assert parent.status == ExecutionStatus.WAITING  # marked when the child was created
    ended = _wait_ended(store, parent_id)
    assert ended.status == ExecutionStatus.SUCCESS, ended.message
    assert ended.message == "done"


def test_freed_slots_alone_do_not_claim(
    store: Store, workspace: Workspace, worker: Worker, claims: list[int]
) -> None:
    parent_id = _create(store, workspace, "chain", {"children": 5})
    ended = _wait_ended(store, parent_id)
    assert ended.status == ExecutionStatus.SUCCESS, ended.message
    # the parent and its children were handed over; each child's start, wait and end freed
    # or took a slot, which used to cost a claim transaction each time
    assert claims.count(0) <= 1, claims


def test_waited_child_hands_its_committed_record_to_its_parent(
    store: Store, workspace: Workspace, worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parent gets each child's record from the ending, as a read of the store gives it."""
    delivered: list[dict[str, object] | None] = []
    real_deliver = AwaitedChild.deliver

    def deliver(self: AwaitedChild, record: dict[str, object] | None) -> None:
        if record is not None:  # committed by now: a fresh read must give the same record
            with store.read() as session:
                stored = session.get(Execution, self.child_id)
                assert stored is not None
                assert record == executions.execution_view(stored, workspace.slug)
                parent = session.get(Execution, self.parent_id)
                assert parent is not None
                assert parent.status == ExecutionStatus.RUNNING  # resumed in that transaction
        delivered.append(record)
        real_deliver(self, record)

    monkeypatch.setattr(AwaitedChild, "deliver", deliver)
    parent_id = _create(store, workspace, "chain", {"children": 3})
    ended = _wait_ended(store, parent_id)
    assert ended.status == ExecutionStatus.SUCCESS, ended.message
    assert len(delivered) == 3
    with store.read() as session:
        children = executions.child_ids(session, parent_id)
    assert [r and r["id"] for r in delivered] == children
    assert all(r and r["status"] == "success" and r["parent_id"] == parent_id for r in delivered)
