"""The messages of a link applied on the real store, both backends, without HTTP in between.

Workspace ``ws-a`` controls ``ws-b`` through the pair of sync configs ``to-b`` / ``from-a``.
``deliver`` moves what one end has in its outbox to the other end, as an exchange would, so
redelivery, reordering and refusals can be tested one message at a time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from anyio import to_thread
from sqlalchemy import func, select

from flowlink.errors import Conflict, Invalid, NotFound
from flowlink.events import service as events
from flowlink.execution_status import ExecutionStatus
from flowlink.executions import service as executions
from flowlink.linking import exchange, inbound, outbox
from flowlink.linking import messages as messages_module
from flowlink.linking import service as linking
from flowlink.linking.inbound import SyncRejected
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import (
    Automation,
    AutomationTrigger,
    Event,
    Execution,
    LinkExecution,
    LinkNonce,
    LinkOutbox,
    SyncConfig,
    Workspace,
    utcnow,
)
from flowlink.timestamps import format_timestamp, parse_timestamp
from flowlink.web.workspace import link_rows
from flowlink.workspaces import service as workspaces
from tests.conftest import statements

from .conftest import KeyMaker, public_pem_of

SECRET = "exchange-test-secret"
CHILD = "def handler(system, this, inputs):\n    return this.success('ok')\n"


@dataclass
class Link:
    store: Store
    a: str  # workspace ids
    b: str
    to_b: str  # sync config ids
    from_a: str


@pytest.fixture
def link(store: Store, make_key: KeyMaker) -> Link:
    key_a, key_b = make_key("openssl-genrsa"), make_key("ssh-keygen-pem")
    with store.write() as session:
        a = workspaces.create_workspace(session, "ws-a")
        b = workspaces.create_workspace(session, "ws-b")
        workspaces.put_flow(session, a, "child", CHILD)
        workspaces.put_flow(session, b, "own", CHILD.replace("ok", "own flow"))
        to_b = linking.create_sync_config(
            session,
            a,
            {
                "name": "to-b",
                "remote_url": "http://127.0.0.1:1/api/v1/workspaces/ws-b/sync_config/from-a/sync",
                "own_private_key": key_a.read_text(),
                "remote_public_key": public_pem_of(key_b),
            },
            SECRET,
        )
        from_a = linking.create_sync_config(
            session,
            b,
            {
                "name": "from-a",
                "own_private_key": key_b.read_text(),
                "remote_public_key": public_pem_of(key_a),
            },
            SECRET,
        )
        session.flush()
        return Link(store, a.id, b.id, to_b.id, from_a.id)


def start(link: Link, **fields: Any) -> str:
    with link.store.write() as session:
        workspace = session.get(Workspace, link.a)
        assert workspace is not None
        mirror = exchange.start_remote_execution(
            session, workspace, "to-b", exchange.RemoteStart(flow="child", **fields)
        )
        return mirror.id


def take(link: Link, config_id: str) -> list[dict[str, Any]]:
    """What one end would send now (after collecting its changes)."""
    with link.store.write() as session:
        config = session.get(SyncConfig, config_id)
        assert config is not None
        workspace = session.get(Workspace, config.workspace_id)
        assert workspace is not None
        exchange.collect_changes(session, config)
    with link.store.read() as session:
        return outbox.pending(session, config_id, 1000)


def apply(link: Link, config_id: str, messages: list[dict[str, Any]]) -> list[str]:
    with link.store.write() as session:
        config = session.get(SyncConfig, config_id)
        assert config is not None
        workspace = session.get(Workspace, config.workspace_id)
        assert workspace is not None
        typed = [messages_module.from_wire(message) for message in messages]
        return exchange.apply_messages(session, config, workspace, typed)


def executions_of(link: Link, workspace_id: str) -> list[Execution]:
    with link.store.read() as session:
        return list(
            session.scalars(
                select(Execution)
                .where(Execution.workspace_id == workspace_id)
                .order_by(Execution.created_at)
            )
        )


def run_in_b(link: Link, outcome: Callable[[str], executions.Outcome]) -> str:
    """Play B's worker: claim the queued execution, log a line, end it."""
    with link.store.write() as session:
        (claimed,) = executions.claim(session, "test-worker", 1, 30)
        execution_id = claimed.execution.id
        executions.append_logs(session, execution_id, ["line one", "line two"])
    with link.store.write() as session:
        executions.finish(session, execution_id, outcome(execution_id))
    return execution_id


def test_start_runs_once_however_often_it_is_delivered(link: Link) -> None:
    mirror_id = start(link, inputs={"n": 1})
    (message,) = take(link, link.to_b)
    assert message["type"] == "execution.start" and message["script"] == CHILD
    assert apply(link, link.from_a, [message]) == [message["id"]]
    assert apply(link, link.from_a, [message]) == [message["id"]]  # acked again, not rerun
    (remote,) = executions_of(link, link.b)
    assert remote.inputs == {"n": 1} and remote.script == CHILD and remote.flow_id is None
    assert remote.trigger["originExecutionId"] == mirror_id
    assert remote.principal and remote.principal["kind"] == "sync_config"
    assert remote.principal["role"] == "editor"
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and remote.correlation_id == mirror.correlation_id
    with link.store.write() as session:
        # Only the remote run is claimed: the local mirror runs over there.
        claimed = executions.claim(session, "w", 10, 30)
        assert [c.execution.id for c in claimed] == [remote.id]


def test_updates_mirror_status_outputs_and_logs_once(link: Link) -> None:
    mirror_id = start(link)
    apply(link, link.from_a, take(link, link.to_b))
    run_in_b(link, lambda _: executions.Outcome("success", "done", {"x": 1}))
    updates = [m for m in take(link, link.from_a) if m["type"] == "execution.update"]
    assert updates and updates[-1]["status"] == "success"
    apply(link, link.to_b, updates)
    apply(link, link.to_b, updates)  # redelivered: no second copy of the logs
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None
        assert (mirror.status, mirror.message, mirror.outputs) == ("success", "done", {"x": 1})
        # The first update it saw was the end: it still shows as started, with a duration.
        assert mirror.started_at is not None and mirror.ended_at is not None
        assert mirror.started_at <= mirror.ended_at
        started = session.scalars(
            select(Event.type).where(Event.type == "executions.started")
        ).all()
        assert len(started) == 2  # in B by the worker, in A for the mirror
        lines = [entry.line for entry in executions.get_logs(session, mirror_id)]
    assert lines == ["line one", "line two"]
    # Once told, nothing more is sent about it.
    with link.store.write() as session:
        outbox.acknowledge(session, link.from_a, [m["id"] for m in updates])
    assert take(link, link.from_a) == []


def test_a_start_is_sent_once_it_has_lasted_the_grace(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "START_GRACE", timedelta(seconds=0.3))
    start(link)
    apply(link, link.from_a, take(link, link.to_b))
    with link.store.write() as session:
        executions.claim(session, "w", 1, 30)
    assert take(link, link.from_a) == []  # it may end at once: then one update says it all
    time.sleep(0.35)
    (running,) = take(link, link.from_a)
    assert running["status"] == "running" and running["started_at"]


def test_an_older_update_never_undoes_a_newer_one(
    link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(exchange, "START_GRACE", timedelta(0))
    mirror_id = start(link)
    apply(link, link.from_a, take(link, link.to_b))
    with link.store.write() as session:
        executions.claim(session, "w", 1, 30)
    (running,) = take(link, link.from_a)
    with link.store.write() as session:
        outbox.acknowledge(session, link.from_a, [running["id"]])
    remote_id = executions_of(link, link.b)[0].id
    with link.store.write() as session:
        executions.finish(session, remote_id, executions.Outcome("error", "boom", None, "x"))
    (ended,) = take(link, link.from_a)
    assert (running["revision"], ended["revision"]) == (1, 2)
    apply(link, link.to_b, [ended, running])  # out of order
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and (mirror.status, mirror.message) == ("error", "boom")


def test_use_remote_flow_runs_their_flow_or_fails_clearly(link: Link) -> None:
    with link.store.write() as session:
        workspace = session.get(Workspace, link.a)
        assert workspace is not None
        ids = {
            flow: exchange.start_remote_execution(
                session, workspace, "to-b", exchange.RemoteStart(flow=flow, use_remote_flow=True)
            ).id
            for flow in ("own", "absent")
        }
    messages = take(link, link.to_b)
    assert [m["script"] for m in messages] == [None, None]
    apply(link, link.from_a, messages)
    (remote,) = executions_of(link, link.b)
    assert remote.flow_name == "own" and "own flow" in remote.script
    refusal = [m for m in take(link, link.from_a) if m["origin_execution_id"] == ids["absent"]]
    assert refusal[0]["status"] == "error"
    assert "flow 'absent' not found" in refusal[0]["message"]
    apply(link, link.to_b, refusal)
    with link.store.read() as session:
        failed = session.get(Execution, ids["absent"])
        assert failed is not None and (failed.status, failed.error_kind) == ("error", "not_found")


def test_controlling_end_refuses_starts_and_controlled_end_cannot_start(link: Link) -> None:
    with link.store.write() as session:
        workspace = session.get(Workspace, link.b)
        assert workspace is not None
        with pytest.raises(Invalid, match="controlled by the other workspace"):
            exchange.start_remote_execution(
                session, workspace, "from-a", exchange.RemoteStart(flow="own")
            )
        with pytest.raises(NotFound, match="no workspace link named 'nope'"):
            exchange.start_remote_execution(
                session, workspace, "nope", exchange.RemoteStart(flow="own")
            )
    # A start arriving at the controlling end (a misconfigured pair) is refused, not run.
    forged = messages_module.StartMessage.new(
        origin_execution_id="x-1", flow="own", inputs={}, script=CHILD
    ).wire()
    apply(link, link.to_b, [forged])
    assert [e.trigger.get("type") for e in executions_of(link, link.a)] == []
    (refusal,) = take(link, link.to_b)
    assert refusal["status"] == "error" and refusal["error_kind"] == "refused"


def test_cancel_travels_and_ends_the_remote_run(link: Link) -> None:
    mirror_id = start(link)
    apply(link, link.from_a, take(link, link.to_b))
    with link.store.write() as session:
        executions.claim(session, "w", 1, 30)
    with link.store.write() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None
        executions.request_cancel(session, mirror, cancel_remote=exchange.cancel_mirrored)
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and mirror.status == "cancelled"
    cancel = [m for m in take(link, link.to_b) if m["type"] == "execution.cancel"]
    apply(link, link.from_a, cancel)
    apply(link, link.from_a, cancel)
    (remote,) = executions_of(link, link.b)
    assert remote.cancel_requested  # running: its worker kills the runner


def test_send_all_copies_past_and_future_executions_read_only(link: Link) -> None:
    with link.store.write() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        past = executions.create_execution(session, a, flow_name="child").id
    with link.store.write() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        linking.update_sync_config(session, a, "to-b", {"send_all_executions": True}, SECRET)
        future = executions.create_execution(session, a, flow_name="child").id
    messages = take(link, link.to_b)
    assert {m["origin_execution_id"] for m in messages} == {past, future}
    assert all(m["mirror"] for m in messages)
    apply(link, link.from_a, messages)
    apply(link, link.from_a, messages)
    copies = executions_of(link, link.b)
    assert len(copies) == 2 and all(c.remote_config_id == link.from_a for c in copies)
    assert {c.trigger["type"] for c in copies} == {"mirror"}
    with link.store.write() as session:
        assert executions.claim(session, "w", 10, 30)[0].execution.id in (past, future)
    with link.store.write() as session, pytest.raises(Conflict, match="read-only copy"):
        executions.request_cancel(session, copies[0], cancel_remote=exchange.cancel_mirrored)


def test_deleting_a_link_ends_its_waiting_mirrors(link: Link) -> None:
    mirror_id = start(link)
    with link.store.write() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        exchange.delete_link(session, a, "to-b")
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and mirror.status == "error"
        assert "deleted" in (mirror.message or "")
        assert session.scalar(select(func.count()).select_from(LinkExecution)) == 0


def test_a_poll_that_starts_following_a_run_hears_its_end(link: Link) -> None:
    """The look that finds a new run to follow can overlap the run's end: the end was
    announced while the poll listened to its outbox only. The poll looks again once it
    listens to the workspace's executions, so it answers with the end at once instead of
    at its timeout (here the poll is told to stop as soon as it would wait: without that
    second look it answers nothing)."""
    store = link.store
    start(link)
    apply(link, link.from_a, take(link, link.to_b))  # B follows a queued run now

    async def poll() -> list[dict[str, Any]]:
        with store.notifier.waiter({notify.LINK: {link.from_a}}) as waiter:
            looked = await to_thread.run_sync(exchange.look_for_news, store, link.from_a, 999)
            assert looked.follows and not looked.messages
            run_in_b(link, lambda _: executions.Outcome(ExecutionStatus.SUCCESS, "done", {}))
            return await exchange.wait_for_news(
                store,
                link.from_a,
                link.b,
                30.0,
                stopping=lambda: True,
                limit=999,
                waiter=waiter,
                first=looked,
            )

    (update,) = asyncio.run(poll())
    assert update["type"] == "execution.update"
    assert update["status"] == ExecutionStatus.SUCCESS


def test_a_late_update_never_moves_an_ended_mirror(link: Link) -> None:
    mirror_id = start(link)
    apply(link, link.from_a, take(link, link.to_b))
    run_in_b(link, lambda _: executions.Outcome("success", "done", {"x": 1}))
    updates = [m for m in take(link, link.from_a) if m["type"] == "execution.update"]
    apply(link, link.to_b, updates)
    with link.store.read() as session:
        before = session.get(Execution, mirror_id)
        assert before is not None and before.status == "success"
        kept = (before.status, before.message, before.outputs, before.ended_at)
    # A newer revision that would move it back (a confused or replaying peer): acked, ignored.
    late = {
        **updates[-1],
        "id": "late-1",
        "revision": updates[-1]["revision"] + 1,
        "status": "running",
        "message": "late",
        "outputs": {"y": 2},
    }
    assert apply(link, link.to_b, [late]) == ["late-1"]
    with link.store.read() as session:
        after = session.get(Execution, mirror_id)
        assert after is not None
        assert (after.status, after.message, after.outputs, after.ended_at) == kept


def test_a_run_reported_once_it_ended_is_started_and_ended_by_one_update(link: Link) -> None:
    # The fan-out's usual case: the other end reports a run once, when it ended. Its mirror
    # here goes from queued to ended in one UPDATE, its two events in one INSERT.
    mirror_id = start(link)
    ended = utcnow()
    update = messages_module.UpdateMessage.new(
        origin_execution_id=mirror_id,
        revision=1,
        status=ExecutionStatus.SUCCESS,
        message="ran over there",
        outputs={"got": 1},
        started_at=format_timestamp(ended - timedelta(seconds=3)),
        ended_at=format_timestamp(ended),
        logs=[],
    ).wire()
    with statements(link.store.engine) as seen:
        apply(link, link.to_b, [update])
    assert len([s for s in seen if s.startswith("UPDATE EXECUTIONS")]) == 1, seen
    assert len([s for s in seen if s.startswith("INSERT INTO EVENTS")]) == 1, seen
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and mirror.started_at and mirror.ended_at
        assert (mirror.status, mirror.message, mirror.outputs) == (
            "success",
            "ran over there",
            {"got": 1},
        )
        # on this server's clock, with the run's remote duration
        assert abs((mirror.ended_at - mirror.started_at).total_seconds() - 3) < 0.5
        recorded = session.execute(
            select(Event.type, Event.payload)
            .where(Event.correlation_id == mirror.correlation_id)
            .order_by(Event.created_at, Event.id)
        ).all()
    assert [kind for kind, _ in recorded] == [
        "executions.created",
        "executions.started",
        "executions.ended",
    ]
    assert recorded[1][1] == {"id": mirror_id, "flow": "child", "worker": "link:to-b"}
    assert recorded[2][1]["status"] == "success"
    assert abs(recorded[2][1]["duration"] - 3) < 0.5
    # Redelivered: nothing moves, nothing is recorded again.
    apply(link, link.to_b, [update])
    with link.store.read() as session:
        again = session.scalar(
            select(func.count())
            .select_from(Event)
            .where(Event.correlation_id == mirror.correlation_id)
        )
    assert again == 3


def test_a_run_reported_running_then_ended_records_its_start_once(link: Link) -> None:
    mirror_id = start(link)
    stamp = format_timestamp(utcnow())
    running = messages_module.UpdateMessage.new(
        origin_execution_id=mirror_id, revision=1, status=ExecutionStatus.RUNNING, started_at=stamp
    ).wire()
    ended = messages_module.UpdateMessage.new(
        origin_execution_id=mirror_id,
        revision=2,
        status=ExecutionStatus.ERROR,
        message="boom",
        error_kind="exception",
        started_at=stamp,
        ended_at=format_timestamp(utcnow()),
    ).wire()
    apply(link, link.to_b, [running])
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and mirror.status == "running" and mirror.started_at
        started_at = mirror.started_at
    apply(link, link.to_b, [ended])
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and (mirror.status, mirror.message) == ("error", "boom")
        assert mirror.started_at == started_at  # the ending keeps the start it had
        kinds = session.scalars(
            select(Event.type)
            .where(Event.correlation_id == mirror.correlation_id)
            .order_by(Event.created_at, Event.id)
        ).all()
    assert kinds == ["executions.created", "executions.started", "executions.ended"]


def test_a_look_at_a_link_reads_its_state_and_outbox_in_one_statement(link: Link) -> None:
    # Every woken poll looks, and every answered exchange reads the same: one round trip.
    mirror_id = start(link)
    looked: list[exchange.News] = []
    with statements(link.store.engine) as seen:
        looked.append(exchange.look_for_news(link.store, link.to_b, 10))
    assert len([s for s in seen if not s.startswith("BEGIN")]) == 1, seen  # SQLite: a BEGIN
    ((message,),) = [news.messages for news in looked]
    assert (message["type"], message["origin_execution_id"]) == ("execution.start", mirror_id)
    assert looked[0].follows is False  # the controlling end follows no run of its own

    with statements(link.store.engine) as seen, link.store.write() as session:
        config = session.get(SyncConfig, link.to_b)
        assert config is not None
        seen.clear()
        looked.append(exchange.News(*reversed(exchange.follows_and_outgoing(session, config, 10))))
    assert len([s for s in seen if s.startswith("SELECT") and "LINK_OUTBOX" in s]) == 1, seen
    assert [m["id"] for m in looked[-1].messages] == [message["id"]]
    # The other end follows the run it started; once it ended, a look collects it (a write).
    apply(link, link.from_a, [message])
    assert exchange.look_for_news(link.store, link.from_a, 10).follows is True
    run_in_b(link, lambda _: executions.Outcome("success", "done"))
    news = exchange.look_for_news(link.store, link.from_a, 10)
    assert [m["status"] for m in news.messages] == ["success"]
    with link.store.write() as session:
        outbox.acknowledge(session, link.from_a, [m["id"] for m in news.messages])
    assert exchange.look_for_news(link.store, link.from_a, 10) == exchange.News([], False)
    # A link that is gone says so.
    with pytest.raises(NotFound):
        exchange.look_for_news(link.store, "no-such-link", 10)


def _ended_update(mirror_id: str, **fields: Any) -> messages_module.UpdateMessage:
    stamp = format_timestamp(utcnow())
    return messages_module.UpdateMessage.new(
        origin_execution_id=mirror_id,
        revision=1,
        status=ExecutionStatus.SUCCESS,
        started_at=stamp,
        ended_at=stamp,
        **fields,
    )


def _exchange(link: Link, message: messages_module.LinkMessage) -> None:
    """Apply a message as an answered exchange does: its link read by ``get_link``."""
    with link.store.write() as session:
        workspace, config = linking.get_link(session, "ws-a", "to-b")
        exchange.apply_messages(session, config, workspace, [message])


def test_an_exchange_looks_up_no_listeners_where_no_automation_listens(link: Link) -> None:
    # The link's own statement tells whether an automation of the workspace listens to
    # events: a run's start and end then need no lookup of their listeners.
    mirror_id = start(link)
    with statements(link.store.engine) as seen:
        _exchange(link, _ended_update(mirror_id))
    assert not [s for s in seen if s.startswith("SELECT AUTOMATION_TRIGGERS.")], seen
    with link.store.read() as session:
        mirror = session.get(Execution, mirror_id)
        assert mirror is not None and mirror.status == "success"
    # Once one listens, a run that ends through the link starts it.
    with link.store.write() as session:
        automation = Automation(
            workspace_id=link.a, slug="audit", flow_name="child", spec={"flow": "child"}
        )
        session.add(automation)
        session.flush()
        session.add(
            AutomationTrigger(
                workspace_id=link.a, automation_id=automation.id, event_type="executions.ended"
            )
        )
    mirror_id = start(link)
    _exchange(link, _ended_update(mirror_id))
    started = [e for e in executions_of(link, link.a) if (e.trigger or {}).get("automation")]
    assert [(e.flow_name, e.trigger["automation"]) for e in started] == [("child", "audit")]
    assert started[0].correlation_id == executions_of(link, link.a)[1].correlation_id


def add_sites(link: Link, make_key: KeyMaker, names: list[str]) -> dict[str, str]:
    """More links of ws-a, each to a site of that name that is never reached: their ids."""
    key, other = make_key("openssl-genrsa"), make_key("openssl-genrsa")
    with link.store.write() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        configs = {
            name: linking.create_sync_config(
                session,
                a,
                {
                    "name": name,
                    "remote_url": f"http://127.0.0.1:1/api/v1/workspaces/ws-x/sync_config/{name}/sync",
                    "own_private_key": key.read_text(),
                    "remote_public_key": public_pem_of(other),
                },
                SECRET,
            )
            for name in names
        }
        session.flush()
        return {name: config.id for name, config in configs.items()}


def test_a_batch_of_starts_through_many_links_reads_them_once_and_writes_at_the_commit(
    link: Link, make_key: KeyMaker
) -> None:
    # A query per start would flush the rows of the starts before it: a round trip each.
    names = [f"site-{n}" for n in range(3)]
    add_sites(link, make_key, names)
    with statements(link.store.engine) as seen, link.store.write() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        exchange.prepare_remote_starts(session, a, [*names, "to-b"])
        for name in [*names, "to-b"]:
            exchange.start_remote_execution(session, a, name, exchange.RemoteStart(flow="child"))
        before_commit = list(seen)
    assert len([s for s in before_commit if "FROM SYNC_CONFIGS" in s]) == 1, before_commit
    rows = ("INSERT INTO EXECUTIONS", "INSERT INTO LINK_EXECUTIONS", "INSERT INTO LINK_OUTBOX")
    assert not [s for s in before_commit if s.startswith(rows)], before_commit
    with link.store.read() as session:
        queued = session.scalar(select(func.count()).select_from(LinkOutbox))
    assert queued == 4


def test_the_list_of_many_links_reads_their_outboxes_and_nonces_in_two_queries(
    link: Link, make_key: KeyMaker
) -> None:
    names = [f"site-{n}" for n in range(6)]
    seen_at = utcnow() - timedelta(minutes=3)
    ids = add_sites(link, make_key, names)
    with link.store.write() as session:
        for n, name in enumerate(names):  # site-n: n messages waiting, a nonce on odd n
            outbox.enqueue_many(
                session, ids[name], [{"id": f"{name}-{m}", "type": "x"} for m in range(n)]
            )
            if n % 2:
                session.add(LinkNonce(sync_config_id=ids[name], nonce="a", seen_at=seen_at))
                old = seen_at - timedelta(minutes=n)
                session.add(LinkNonce(sync_config_id=ids[name], nonce="b", seen_at=old))
    with link.store.read() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        configs = linking.list_sync_configs(session, a)
        with statements(link.store.engine) as seen:
            views = linking.sync_config_views(session, configs, a.slug)
    assert len(seen) == 2, seen
    by_name = {view["name"]: view for view in views}
    assert [view["name"] for view in views] == [*names, "to-b"]
    for n, name in enumerate(names):
        assert by_name[name]["outbox_depth"] == n
        shown = by_name[name]["state"].get("last_exchange_at")
        assert shown == (format_timestamp(seen_at) if n % 2 else None), (name, shown)
    assert by_name["to-b"]["outbox_depth"] == 0


def test_the_console_finds_the_last_rejection_of_many_links_in_one_query(
    link: Link, make_key: KeyMaker
) -> None:
    names = [f"site-{n}" for n in range(6)]
    add_sites(link, make_key, names)
    for m in range(3):  # site-n: min(n, 3) refusals, one transaction a round, newest last
        with link.store.write() as session:
            a, b = session.get(Workspace, link.a), session.get(Workspace, link.b)
            assert a is not None and b is not None
            for n, name in enumerate(names):
                if m < n:
                    rejection = SyncRejected(f"reason-{m}", f"{name} #{m}")
                    inbound.record_rejection(session, a, name, rejection)
            # Neither another workspace's refusals nor a link's other events count.
            inbound.record_rejection(session, b, "site-0", SyncRejected("other", "ws-b"))
            events.record(session, a, "sync.connected", {"syncConfig": "site-0"})
    with link.store.read() as session:
        a = session.get(Workspace, link.a)
        assert a is not None
        with statements(link.store.engine) as seen:
            rows = link_rows(session, a)
        newest = {
            name: event
            for name in names
            for event in events.search(
                session,
                a,
                events.EventFilter(types=("sync.rejected",), payload=(("syncConfig", name),)),
                limit=1,
            )
        }
    assert len([s for s in seen if "FROM EVENTS" in s]) == 1, seen
    by_name = {row["name"]: row["last_rejection"] for row in rows}
    assert by_name.pop("to-b") is None and by_name.pop("site-0") is None
    for n, name in enumerate(names[1:], 1):
        last = min(n, 3) - 1
        assert by_name[name] == {
            "syncConfig": name,
            "reason": f"reason-{last}",
            "message": f"{name} #{last}",
            "at": format_timestamp(newest[name].created_at),
        }


def test_a_links_public_state_shows_its_times_in_the_one_format() -> None:
    older = {"since": "2026-01-02T03:04:05+00:00", "last_exchange_at": "2026-01-02 04:00:00"}
    assert linking._public_state({**older, "send_all_marked": 1}, None) == {
        "since": "2026-01-02T03:04:05.000Z",
        "last_exchange_at": "2026-01-02T04:00:00.000Z",
    }
    nonce = parse_timestamp("2026-01-02T05:00:00Z")
    assert linking._public_state(older, nonce)["last_exchange_at"] == "2026-01-02T05:00:00.000Z"
    earlier = parse_timestamp("2026-01-02T03:30:00Z")
    assert linking._public_state(older, earlier)["last_exchange_at"] == "2026-01-02T04:00:00.000Z"
    broken = {"since": "soon", "last_exchange_at": "never", "connected": True}
    assert linking._public_state(broken, None) == {
        "since": None,
        "last_exchange_at": None,
        "connected": True,
    }
    assert linking._public_state(broken, nonce)["last_exchange_at"] == "2026-01-02T05:00:00.000Z"
    assert linking._public_state({"since": ""}, None) == {"since": ""}
