"""The execution statuses and their one table of moves, on the real store, both backends."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import select

from flowlink.execution_status import (
    ALLOWED,
    ENDED,
    ExecutionStatus,
    IllegalTransition,
    Outcome,
    transition,
)
from flowlink.executions import service as executions
from flowlink.linking.exchange import cancel_mirrored
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution, Workspace
from tests.executions.conftest import new_executions

Q, R, W = ExecutionStatus.QUEUED, ExecutionStatus.RUNNING, ExecutionStatus.WAITING
S, E, C = ExecutionStatus.SUCCESS, ExecutionStatus.ERROR, ExecutionStatus.CANCELLED

# Written out here on purpose: a change to the table must change this test too.
EXPECTED = {
    (Q, R), (Q, S), (Q, E), (Q, C),
    (R, W), (R, S), (R, E), (R, C),
    (W, R), (W, S), (W, E), (W, C),
}  # fmt: skip


def test_values_are_the_wire_and_database_strings() -> None:
    assert [str(status) for status in ExecutionStatus] == [
        "queued",
        "running",
        "waiting",
        "success",
        "error",
        "cancelled",
    ]
    assert ExecutionStatus("success") is S and S == "success"


@pytest.mark.parametrize(("current", "new"), list(itertools.product(ExecutionStatus, repeat=2)))
def test_every_pair_of_statuses(current: ExecutionStatus, new: ExecutionStatus) -> None:
    if (current, new) in EXPECTED:
        assert transition(current, new) is new
        assert transition(str(current), str(new)) is new  # as read from a row
        assert new in ALLOWED[current]
    else:
        with pytest.raises(IllegalTransition) as caught:
            transition(current, new)
        expected = f"an execution cannot go from '{current}' to '{new}'"
        assert caught.value.message.startswith(expected)
        assert caught.value.details == {"status": current, "to": new}
        assert new not in ALLOWED[current]


def test_ended_statuses_are_terminal_and_unknown_ones_are_named() -> None:
    assert {status for status, moves in ALLOWED.items() if not moves} == set(ENDED)
    with pytest.raises(IllegalTransition, match=r"allowed from 'success': none \(it has ended\)"):
        transition(S, R)
    with pytest.raises(ValueError, match="unknown execution status 'done'; known: queued"):
        transition(R, "done")


def test_an_outcome_is_an_end() -> None:
    assert Outcome("error", "x").status is E  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'running' is not an end"):
        Outcome(R, "still going")


def _ended(store: Store, workspace: Workspace) -> str:
    """An execution that was claimed, waited on a child, ran again and succeeded."""
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        (claimed,) = executions.claim(session, "w1", 1, 30)
        assert claimed.execution.status == R
    for waiting, expected in ((True, W), (False, R)):
        with store.write() as session:
            executions.set_waiting(session, execution_id, waiting)
        with store.read() as session:
            assert session.get(Execution, execution_id).status == expected  # type: ignore[union-attr]
    with store.write() as session:
        outcome = Outcome(S, "done", {"a": 1})
        assert executions.finish(session, execution_id, outcome, worker_id="w1")
    return execution_id


def _state(store: Store, execution_id: str) -> tuple[object, ...]:
    with store.read() as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        return (row.status, row.message, row.outputs, row.error_kind, row.ended_at)


def test_an_illegal_move_is_refused_and_leaves_the_row_as_it_was(
    store: Store, workspace: Workspace
) -> None:
    execution_id = _ended(store, workspace)
    before = _state(store, execution_id)
    assert before[:3] == ("success", "done", {"a": 1})
    with pytest.raises(IllegalTransition), store.write() as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        executions.set_status(row, R)
    # The writers that race with an end (a late runner end, the reaper, a cancel, a child's
    # wait ending) leave an ended execution alone.
    with store.write() as session:
        assert executions.finish_many(session, [(execution_id, Outcome(E, "late"))]) == []
        executions.set_waiting(session, execution_id, True)
        executions.set_waiting(session, execution_id, False)
        assert executions.reap_expired(session) == []
    assert _state(store, execution_id) == before
    with store.read() as session:
        ended = session.scalars(select(Event).where(Event.type == "executions.ended")).all()
    assert [event.payload["status"] for event in ended] == ["success"]


def test_a_queued_execution_ends_without_running(store: Store, workspace: Workspace) -> None:
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        row = session.get(Execution, execution_id)
        assert row is not None
        executions.request_cancel(session, row, reason="not needed", cancel_remote=cancel_mirrored)
    assert _state(store, execution_id)[:3] == ("cancelled", "not needed", {})
    with store.write() as session:
        assert executions.claim(session, "w1", 1, 30) == []  # never claimed after its end
