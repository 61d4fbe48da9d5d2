"""The event store on both backends: atomicity, custom events, search, triggers, depth limit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from flowlink import assembly
from flowlink.automations import triggers
from flowlink.errors import Invalid
from flowlink.events import service as events
from flowlink.executions import service as executions
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution, Workspace, utcnow
from flowlink.workspaces import service as workspaces

WORKSPACE_YML = """name: Events
slug: ev
automations:
  on-order:
    flow: handle
    when:
      events: [order.created]
  on-order-too:
    flow: handle
    when:
      events: [order.created, order.updated]
  loop:
    flow: handle
    when:
      events: [loop.tick]
"""
HANDLE = "def handler(system, this, inputs):\n    return this.success('ok')\n"


def apply(store: Store, yml: str = WORKSPACE_YML, flows: dict[str, str] | None = None) -> None:
    files = {"workspace.yml": yml, **{f"flows/{k}.py": v for k, v in (flows or {}).items()}}
    files.setdefault("flows/handle.py", HANDLE)
    with store.write() as session:
        assembly.apply_bundle(session, workspaces.parse_files(files), {})


def workspace(session: Any, slug: str = "ev") -> Workspace:
    return workspaces.get_workspace(session, slug)


def count(store: Store, **where: Any) -> int:
    with store.read() as session:
        query = select(func.count()).select_from(Event)
        for key, value in where.items():
            query = query.where(getattr(Event, key) == value)
        return int(session.scalar(query) or 0)


def test_native_event_rolls_back_with_its_change(store: Store) -> None:
    before = count(store, type="workspaces.created")
    with pytest.raises(RuntimeError), store.write() as session:
        workspaces.create_workspace(session, "gone")
        raise RuntimeError("crash before commit")
    assert count(store, type="workspaces.created") == before
    with store.read() as session:
        assert workspaces.find_workspace(session, "gone") is None
    with store.write() as session:
        workspaces.create_workspace(session, "kept")
    assert count(store, type="workspaces.created") == before + 1


@pytest.mark.parametrize(
    "bad_type", ["", "has space", "a" * 129, "ümlaut", "slash/type", "semi;colon"]
)
def test_invalid_custom_type_is_rejected_and_nothing_stored(store: Store, bad_type: str) -> None:
    apply(store)
    before = count(store)
    with pytest.raises(Invalid) as error, store.write() as session:
        triggers.emit(session, workspace(session), bad_type, {})
    assert error.value.details["field"] == "type"
    assert count(store) == before


def test_oversized_payload_is_413_and_batch_is_all_or_nothing(store: Store) -> None:
    apply(store)
    before = count(store)
    with pytest.raises(events.PayloadTooLarge) as error, store.write() as session:
        triggers.emit_many(
            session,
            workspace(session),
            [("ok.one", {"a": 1}), ("too.big", {"blob": "x" * 100_001})],
        )
    assert error.value.status == 413
    assert error.value.details["index"] == 1
    assert count(store) == before
    with store.write() as session:  # just under the limit is fine
        triggers.emit(session, workspace(session), "big.enough", {"b": "x" * 99_000})


def test_event_starts_every_listener_with_event_as_inputs(store: Store) -> None:
    apply(store)
    with store.write() as session:
        envelope = triggers.emit(
            session, workspace(session), "order.created", {"n": 7}, correlation_id="corr-1"
        )
    with store.read() as session:
        started = list(
            session.scalars(select(Execution).where(Execution.correlation_id == "corr-1"))
        )
        assert sorted(e.trigger["automation"] for e in started) == ["on-order", "on-order-too"]
        for execution in started:
            assert execution.inputs["id"] == envelope["id"]
            assert execution.inputs["payload"] == {"n": 7}
            assert execution.trigger["type"] == "event"
            assert execution.trigger["chainDepth"] == 1
        triggered = events.search(
            session,
            workspace(session),
            events.parse_filter(types="runtime.interactions.triggered", correlation_id="corr-1"),
        )
        assert len(triggered) == 2
        assert triggered[0].payload["trigger"] == {"type": "event", "value": "order.created"}
    with store.write() as session:  # a type nobody listens to starts nothing
        triggers.emit(session, workspace(session), "order.deleted", {}, correlation_id="corr-2")
    with store.read() as session:
        assert not session.scalar(select(Execution.id).where(Execution.correlation_id == "corr-2"))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_listener_lookup_uses_the_index(store: Store) -> None:
    # SQLite only: its EXPLAIN QUERY PLAN is stable; PostgreSQL chooses by table statistics.
    apply(store)
    with store.read() as session:
        rows = session.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT automation_id FROM automation_triggers "
            "WHERE workspace_id = 'w' AND event_type IN ('a', 'b')"
        )
        assert "ix_automation_triggers_lookup" in " ".join(str(r) for r in rows)


def test_trigger_loop_stops_at_depth_limit_with_error_event(store: Store) -> None:
    apply(store)
    with store.write() as session:
        ws = workspace(session)
        triggers.emit(session, ws, "loop.tick", {}, correlation_id="loop")
    # Simulate the chain: each started execution emits loop.tick again.
    for _ in range(30):
        with store.write() as session:
            ws = workspace(session)
            newest = session.scalar(
                select(Execution)
                .where(Execution.correlation_id == "loop")
                .order_by(Execution.created_at.desc(), Execution.id.desc())
                .limit(1)
            )
            assert newest is not None
            triggers.emit_from_execution(session, ws, newest.id, "loop.tick", {}, max_depth=5)
    with store.read() as session:
        started = list(session.scalars(select(Execution).where(Execution.correlation_id == "loop")))
        assert max(e.trigger["chainDepth"] for e in started) == 5
        assert len(started) == 5
        errors = events.search(
            session, workspace(session), events.parse_filter(types="error", correlation_id="loop")
        )
        assert errors
        assert errors[0].payload["reason"] == "trigger_depth_limit"
        assert errors[0].payload["limit"] == 5


def test_child_executions_inherit_the_chain_depth(store: Store) -> None:
    apply(store)
    with store.write() as session:
        ws = workspace(session)
        triggers.emit(session, ws, "loop.tick", {}, correlation_id="kids")
        parent = session.scalar(select(Execution).where(Execution.correlation_id == "kids"))
        assert parent is not None
        child = executions.create_execution(session, ws, flow_name="handle", parent=parent)
        session.flush()
        assert triggers.chain_depth(session, child) == 1


def _seed_search(store: Store) -> None:
    apply(store)
    with store.write() as session:
        ws = workspace(session)
        triggers.emit(
            session, ws, "shop.order", {"customer": "alice", "total": 10}, correlation_id="c1"
        )
        triggers.emit(session, ws, "shop.refund", {"customer": "bob", "note": "damaged parcel"})
        triggers.emit(
            session,
            ws,
            "crm.contact",
            {"customer": "alice", "nested": {"city": "Vienna"}},
            correlation_id="c1",
        )


def test_search_filters(store: Store) -> None:
    _seed_search(store)
    with store.read() as session:
        ws = workspace(session)

        def types(**kwargs: Any) -> list[str]:
            return [e.type for e in events.search(session, ws, events.parse_filter(**kwargs))]

        assert types(types="shop.*") == ["shop.refund", "shop.order"]
        assert types(types="shop.order,crm.contact") == ["crm.contact", "shop.order"]
        assert types(correlation_id="c1") == ["crm.contact", "shop.order"]
        assert types(text="damaged") == ["shop.refund"]
        assert types(text="refund") == ["shop.refund"]  # type is indexed too
        assert types(text="alice Vienna") == ["crm.contact"]
        assert types(types="shop.*,crm.*", matches={"payload.customer": "alice"}) == [
            "crm.contact",
            "shop.order",
        ]
        assert types(matches={"payload.nested.city": "Vienna"}) == ["crm.contact"]
        assert types(matches={"payload.total": "10"}) == ["shop.order"]
        assert types(types="shop.*", matches={"source.workspaceSlug": "ev"}) == [
            "shop.refund",
            "shop.order",
        ]
        future = (utcnow() + timedelta(hours=1)).isoformat()
        assert types(types="shop.*", after_date=future) == []
        assert types(types="shop.*", before_date=future) == ["shop.refund", "shop.order"]
        page1 = events.search(session, ws, events.parse_filter(types="shop.*,crm.*"), limit=2)
        page2 = events.search(
            session,
            ws,
            events.parse_filter(types="shop.*,crm.*"),
            limit=2,
            before_seq=page1[-1].seq,
        )
        assert [e.type for e in page1 + page2] == ["crm.contact", "shop.refund", "shop.order"]


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"types": "bad type"}, "types"),
        ({"types": "a*b"}, "types"),
        ({"types": "ok,,"}, "types"),
        ({"after_date": "yesterday"}, "afterDate"),
        ({"before_date": "2026-13-45"}, "beforeDate"),
        ({"matches": {"payload.": "x"}}, "payload."),
        ({"matches": {"source.a..b": "x"}}, "source.a..b"),
        ({"after_date": "2026-02-01", "before_date": "2026-01-01"}, "afterDate"),
    ],
)
def test_malformed_filters_name_the_parameter(kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(Invalid) as error:
        events.parse_filter(**kwargs)
    assert error.value.details["parameter"] == parameter
    assert error.value.status == 422


def test_automation_executed_event_on_end(store: Store) -> None:
    apply(store)
    with store.write() as session:
        triggers.emit(session, workspace(session), "order.updated", {}, correlation_id="ae")
        execution_id = session.scalar(select(Execution.id).where(Execution.correlation_id == "ae"))
    assert execution_id
    with store.write() as session:
        executions.finish(session, execution_id, executions.Outcome("success", "done", {"x": 1}))
    with store.read() as session:
        found = events.search(
            session,
            workspace(session),
            events.parse_filter(types="runtime.automations.executed", correlation_id="ae"),
        )
        assert len(found) == 1
        assert found[0].payload["slug"] == "on-order-too"
        assert found[0].payload["status"] == "success"
        assert found[0].payload["output"] == {"x": 1}
        assert found[0].source["automationSlug"] == "on-order-too"
