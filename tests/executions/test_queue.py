"""The executions queue on the real store, both backends: claim, lease, reap, cancel, end."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.executions import service as executions
from flowlink.linking.exchange import cancel_mirrored
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution, Workspace, utcnow
from flowlink.workspaces import service as workspaces
from tests.conftest import statements
from tests.executions.conftest import SCRIPT, new_executions


def test_create_snapshots_script_and_records_event(store: Store, workspace: Workspace) -> None:
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        workspaces.put_flow(session, ws, "hello", SCRIPT.replace("ok", "changed"))
    with store.read() as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert execution.script == SCRIPT
        assert execution.status == "queued"
        created = session.scalars(select(Event).where(Event.type == "executions.created")).one()
        assert created.payload["id"] == execution_id
        assert created.correlation_id == execution.correlation_id


def test_unknown_flow_and_bad_inputs(store: Store, workspace: Workspace) -> None:
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        with pytest.raises(NotFound, match="flow 'nope' not found"):
            executions.create_execution(session, ws, flow_name="nope")
        with pytest.raises(Invalid) as info:
            executions.create_execution(session, ws, flow_name="hello", inputs=[1, 2])  # type: ignore[arg-type]
        assert info.value.details["field"] == "inputs"


def test_claim_lifecycle_and_events(store: Store, workspace: Workspace) -> None:
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        claimed = [c.execution for c in executions.claim(session, "w1", 10, 15)]
    assert [e.id for e in claimed] == [execution_id]
    assert claimed[0].status == "running" and claimed[0].worker_id == "w1"
    with store.write() as session:
        assert executions.claim(session, "w2", 10, 15) == []
    with store.write() as session:
        assert executions.finish(
            session, execution_id, executions.Outcome("success", "done", {"a": 1}), worker_id="w1"
        )
    with store.write() as session:
        # Ended executions are immutable: a second finish is ignored.
        assert not executions.finish(session, execution_id, executions.Outcome("error", "x"))
        with pytest.raises(Conflict):
            executions.save_progress(session, execution_id, outputs={"b": 2}, message=None)
    with store.read() as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert (execution.status, execution.message, execution.outputs) == (
            "success",
            "done",
            {"a": 1},
        )
        types = list(session.scalars(select(Event.type).order_by(Event.seq)))
    assert types[-3:] == ["executions.created", "executions.started", "executions.ended"]


def test_concurrent_claimers_never_share_an_execution(store: Store, workspace: Workspace) -> None:
    ids = set(new_executions(store, workspace, 300))
    seen: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        try:
            while True:
                with store.write() as session:
                    batch = executions.claim(session, name, 7, 15)
                if not batch:
                    return
                with lock:
                    seen.extend(c.execution.id for c in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=claimer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(seen) == len(set(seen)) == 300
    assert set(seen) == ids


def test_children_are_claimed_before_older_roots(store: Store, workspace: Workspace) -> None:
    roots = new_executions(store, workspace, 3)
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        parent = session.get(Execution, roots[0])
        assert ws is not None and parent is not None
        child = executions.create_execution(session, ws, flow_name="hello", parent=parent)
        child_id = child.id
    with store.write() as session:
        first = executions.claim(session, "w", 1, 15)
    assert [c.execution.id for c in first] == [child_id]


def test_expired_lease_ends_as_worker_lost(store: Store, workspace: Workspace) -> None:
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        executions.claim(session, "dead-worker", 1, 15)
        session.execute(
            update(Execution)
            .where(Execution.id == execution_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with store.write() as session:
        assert executions.reap_expired(session) == [execution_id]
    with store.read() as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert execution.status == "error"
        assert execution.error_kind == "worker_lost"
        assert "worker lost" in (execution.message or "")


def test_renewed_lease_is_not_reaped(store: Store, workspace: Workspace) -> None:
    (execution_id,) = new_executions(store, workspace)
    with store.write() as session:
        executions.claim(session, "w", 1, 0.5)
    with store.write() as session:
        executions.renew_leases(session, "w", [execution_id], 60)
    with store.write() as session:
        assert executions.reap_expired(session) == []


def test_cancel_queued_and_running(store: Store, workspace: Workspace) -> None:
    queued_id, running_id = new_executions(store, workspace, 2)
    with store.write() as session:
        claimed = executions.claim(session, "w", 1, 15)
    assert claimed[0].execution.id == queued_id  # oldest first; swap roles accordingly
    running_id, queued_id = queued_id, running_id
    with store.write() as session:
        for execution_id in (queued_id, running_id):
            execution = session.get(Execution, execution_id)
            assert execution is not None
            executions.request_cancel(session, execution, cancel_remote=cancel_mirrored)
    with store.write() as session:
        to_cancel = executions.renew_leases(session, "w", [running_id], 15)
    assert to_cancel == {running_id}
    with store.read() as session:
        queued = session.get(Execution, queued_id)
        running = session.get(Execution, running_id)
        assert queued is not None and running is not None
        assert queued.status == "cancelled"
        assert running.status == "running" and running.cancel_requested
        with pytest.raises(Conflict):
            executions.request_cancel(session, queued, cancel_remote=cancel_mirrored)


def test_list_pages_newest_first(store: Store, workspace: Workspace) -> None:
    ids = new_executions(store, workspace, 5)
    with store.read() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        page1 = executions.list_executions(session, ws, limit=3)
        page2 = executions.list_executions(session, ws, limit=3, before=page1[-1].id)
        count = session.scalar(select(func.count()).select_from(Execution))
    listed = [e.id for e in page1 + page2]
    assert count == 5
    assert sorted(listed) == sorted(ids) and len(set(listed)) == 5


def test_claim_takes_at_most_the_limit(store: Store, workspace: Workspace) -> None:
    new_executions(store, workspace, 5)
    with store.write() as session:
        assert len(executions.claim(session, "w", 2, 15)) == 2
    with store.read() as session:
        running = session.scalar(
            select(func.count()).select_from(Execution).where(Execution.status == "running")
        )
    assert running == 2


def test_finish_many_ends_each_once_and_skips_foreign_or_ended(
    store: Store, workspace: Workspace
) -> None:
    ids = new_executions(store, workspace, 4)
    with store.write() as session:
        executions.claim(session, "mine", 3, 15)
        claimed_ids = set(
            session.scalars(select(Execution.id).where(Execution.worker_id == "mine"))
        )
    mine = sorted(claimed_ids)
    (unclaimed,) = set(ids) - claimed_ids
    ok = executions.Outcome("success", "done", {"n": 1})
    with store.write() as session:
        ended = executions.finish_many(
            session,
            [(mine[0], ok), (mine[0], ok), (mine[1], ok), (unclaimed, ok)],
            worker_id="mine",
        )
    assert sorted(ended) == sorted(mine[:2])  # duplicates once, unclaimed not ours
    with store.read() as session:
        ended_events = session.scalars(
            select(Event.payload["id"].as_string()).where(Event.type == "executions.ended")
        ).all()
        statuses = {e.id: e.status for e in session.scalars(select(Execution))}
    assert sorted(ended_events) == sorted(mine[:2])
    assert statuses[mine[2]] == "running" and statuses[unclaimed] == "queued"


def test_one_ending_is_one_update_and_reads_the_row_only_when_it_must(
    store: Store, workspace: Workspace
) -> None:
    """Where the backend has ``UPDATE ... RETURNING``, a run's ending writes and reads its row
    in one statement; outputs saved before (to merge with), another worker's run and an ended
    run take the select and end as before."""
    ids = new_executions(store, workspace, 4)
    with store.write() as session:
        executions.claim(session, "mine", 4, 15)
        executions.save_progress(session, ids[1], outputs={"kept": 1, "n": 0}, message="half")
    seen: list[str] = []  # the statements of the last finish

    def finish(execution_id: str, outcome: executions.Outcome, worker: str) -> list[str]:
        with statements(store.engine) as noted, store.write() as session:
            views: dict[str, dict[str, Any] | None] = {execution_id: None}
            done = executions.finish_many(
                session, [(execution_id, outcome)], worker_id=worker, views=views
            )
        seen[:] = noted
        if done:
            with store.read() as session:
                row = session.get(Execution, execution_id)
                assert row is not None
                fresh = executions.execution_view(row, workspace.slug)
            assert views[execution_id] == fresh  # as a read after the commit gives it
        return done

    def reads() -> list[str]:
        return [s for s in seen if s.startswith("SELECT") and "FROM EXECUTIONS" in s]

    returning = store.engine.dialect.update_returning
    assert finish(ids[0], executions.Outcome("success", None, {"n": 1}), "mine") == [ids[0]]
    assert (reads() == []) is returning, seen
    assert len([s for s in seen if s.startswith("UPDATE EXECUTIONS")]) == 1, seen
    assert finish(ids[1], executions.Outcome("error", None, {"n": 2}), "mine") == [ids[1]]
    assert finish(ids[2], executions.Outcome("success", "x"), "theirs") == []
    assert finish(ids[0], executions.Outcome("error", "late"), "mine") == []
    assert len(reads()) == 1, seen  # the select path found it ended
    assert finish(ids[3], executions.Outcome("cancelled", "stop"), "mine") == [ids[3]]
    with store.read() as session:
        rows = {e.id: e for e in session.scalars(select(Execution).where(Execution.id.in_(ids)))}
    first, merged = rows[ids[0]], rows[ids[1]]
    assert (first.status, first.message, first.outputs) == ("success", None, {"n": 1})
    assert first.started_at is not None and first.ended_at is not None
    assert first.lease_expires_at is None
    assert (merged.status, merged.message, merged.outputs) == ("error", "half", {"kept": 1, "n": 2})
    assert rows[ids[2]].status == "running"
    assert (rows[ids[3]].status, rows[ids[3]].message) == ("cancelled", "stop")


def test_lease_renewal_skips_a_row_another_transaction_holds(
    store: Store, workspace: Workspace
) -> None:
    """A renewal never waits on a locked row (an ending holds it), so it cannot deadlock with
    a batch of endings; the other leases are renewed and the held one at the next beat."""
    if store.engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite writers take turns")
    held_id, free_id = new_executions(store, workspace, 2)
    with store.write() as session:
        executions.claim(session, "w", 2, 0.5)
    before = {}
    with store.read() as session:
        for execution_id in (held_id, free_id):
            execution = session.get(Execution, execution_id)
            assert execution is not None
            before[execution_id] = execution.lease_expires_at
    with store.write() as holder:
        holder.execute(select(Execution.id).where(Execution.id == held_id).with_for_update()).all()
        with store.write() as session:
            # Old code waited here on the held row: the timeout makes that a failure.
            session.execute(text("SET LOCAL lock_timeout = '3s'"))
            executions.renew_leases(session, "w", [held_id, free_id], 60)
    with store.read() as session:
        held = session.get(Execution, held_id)
        free = session.get(Execution, free_id)
        assert held is not None and free is not None
        assert held.lease_expires_at == before[held_id]
        assert free.lease_expires_at > before[free_id]
