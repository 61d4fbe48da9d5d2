"""Cron schedules (exactly once across schedulers) and event retention, on both backends."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from flowlink import assembly
from flowlink.automations.scheduler import Scheduler, latest_slot
from flowlink.errors import Invalid
from flowlink.events import service as events
from flowlink.events.retention import RetentionPolicy, cleanup
from flowlink.store.engine import Store
from flowlink.store.models import Automation, Event, Execution, ScheduleSlot, utcnow
from flowlink.workspaces import service as workspaces

SCHEDULED_YML = """name: Cron
slug: cron
automations:
  every-minute:
    flow: tick
    when:
      schedules: ["* * * * *"]
  every-5:
    flow: tick
    when:
      schedules: ["*/5 * * * *", "0 * * * *"]
"""
TICK = "def handler(system, this, inputs):\n    return this.success('tick')\n"


def apply(store: Store, yml: str = SCHEDULED_YML) -> None:
    files = {"workspace.yml": yml, "flows/tick.py": TICK}
    with store.write() as session:
        assembly.apply_bundle(session, workspaces.parse_files(files), {})
        # Pretend the automations exist since long ago, so past slots count.
        session.execute(update(Automation).values(updated_at=datetime(2020, 1, 1, tzinfo=UTC)))


def scheduled(store: Store) -> list[Execution]:
    with store.read() as session:
        return list(
            session.scalars(
                select(Execution).where(Execution.trigger["type"].as_string() == "schedule")
            )
        )


def test_latest_slot() -> None:
    now = datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)
    assert latest_slot("*/5 * * * *", now) == datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    exact = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    assert latest_slot("*/5 * * * *", exact) == exact


def test_invalid_cron_is_rejected_at_apply_naming_the_automation(store: Store) -> None:
    bad = SCHEDULED_YML.replace('"* * * * *"', '"61 * * * *"')
    with pytest.raises(Invalid) as error:
        apply(store, bad)
    assert "every-minute" in error.value.message
    with store.read() as session:
        assert workspaces.find_workspace(session, "cron") is None


def test_each_slot_fires_once_with_schedule_trigger(store: Store) -> None:
    apply(store)
    scheduler = Scheduler(store)
    now = datetime(2026, 1, 1, 10, 5, 20, tzinfo=UTC)
    fired = scheduler.tick(now)
    assert sorted(slug for slug, _, _ in fired) == ["every-5", "every-minute"]
    assert scheduler.tick(now + timedelta(seconds=10)) == []  # same slots: nothing
    fired = scheduler.tick(now + timedelta(minutes=1))
    assert [slug for slug, _, _ in fired] == ["every-minute"]
    runs = scheduled(store)
    assert len(runs) == 3
    assert {r.trigger["identity"].split(":")[0] for r in runs} == {"automation"}
    assert all(r.inputs["schedule"] for r in runs)
    # A slot older than the grace period (the server was down) is skipped, not replayed.
    assert scheduler.tick(now + timedelta(minutes=1, seconds=30)) == []
    with store.read() as session:
        triggered = events.search(
            session,
            workspaces.get_workspace(session, "cron"),
            events.parse_filter(types="runtime.interactions.triggered"),
        )
        assert {e.payload["trigger"]["type"] for e in triggered} == {"schedule"}


def test_a_slot_from_before_the_apply_never_fires(store: Store) -> None:
    files = {"workspace.yml": SCHEDULED_YML, "flows/tick.py": TICK}
    with store.write() as session:
        assembly.apply_bundle(session, workspaces.parse_files(files), {})
        applied_at = datetime(2026, 1, 1, 9, 47, 36, tzinfo=UTC)
        session.execute(update(Automation).values(updated_at=applied_at))
    scheduler = Scheduler(store)
    # The 09:47 slot is from before the apply: a tick right after it fires nothing ...
    assert scheduler.tick(datetime(2026, 1, 1, 9, 47, 37, tzinfo=UTC)) == []
    assert scheduler.tick(datetime(2026, 1, 1, 9, 47, 59, tzinfo=UTC)) == []
    # ... and the next slot fires as usual.
    fired = scheduler.tick(datetime(2026, 1, 1, 9, 48, 1, tzinfo=UTC))
    assert [(slug, slot.minute) for slug, slot, _ in fired] == [("every-minute", 48)]
    # A slot at the very second of the apply belongs to it.
    with store.write() as session:
        session.execute(
            update(Automation).values(updated_at=datetime(2026, 1, 1, 9, 50, tzinfo=UTC))
        )
    fired = scheduler.tick(datetime(2026, 1, 1, 9, 50, 2, tzinfo=UTC))
    assert sorted(slug for slug, _, _ in fired) == ["every-5", "every-minute"]


def test_several_schedulers_fire_each_slot_exactly_once(database_url: str) -> None:
    """Four schedulers, each with its own store connection pool, race over the same slots."""
    stores = [assembly.store(database_url) for _ in range(4)]
    try:
        apply(stores[0])
        base = datetime(2026, 3, 1, 12, 0, 5, tzinfo=UTC)
        errors: list[BaseException] = []

        def run(store: Store) -> None:
            scheduler = Scheduler(store)
            try:
                for minute in range(10):
                    scheduler.tick(base + timedelta(minutes=minute))
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=run, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not errors, errors
        runs = scheduled(stores[0])
        # every-minute: 10 slots; every-5: 12:00 and 12:05 (12:00 matches both expressions).
        by_automation: dict[str, int] = {}
        for run_ in runs:
            by_automation[run_.trigger["automation"]] = (
                by_automation.get(run_.trigger["automation"], 0) + 1
            )
        assert by_automation == {"every-minute": 10, "every-5": 2}
        with stores[0].read() as session:
            assert session.scalar(select(func.count()).select_from(ScheduleSlot)) == 12
    finally:
        for store in stores:
            store.dispose()


def _age(store: Store, slug: str | None, days: float, workspace_id: str | None = None) -> None:
    with store.write() as session:
        if slug is not None:
            workspace_id = workspaces.get_workspace(session, slug).id
        session.execute(
            update(Event)
            .where(Event.workspace_id == workspace_id)
            .values(created_at=utcnow() - timedelta(days=days))
        )


def _count(store: Store, workspace_id: str) -> int:
    with store.read() as session:
        return int(
            session.scalar(select(func.count()).where(Event.workspace_id == workspace_id)) or 0
        )


def test_retention_defaults(store: Store) -> None:
    from flowlink.automations import triggers

    with store.write() as session:
        quiet = workspaces.create_workspace(session, "quiet")
        busy = workspaces.create_workspace(session, "busy")
        old = workspaces.create_workspace(session, "old")
        gone = workspaces.create_workspace(session, "gone")
        fresh = workspaces.create_workspace(session, "fresh")
        ids = {w.slug: w.id for w in (quiet, busy, old, gone, fresh)}
        triggers.emit_many(session, busy, [("x.y", {"i": i}) for i in range(150)])
        triggers.emit_many(session, old, [("x.y", {"i": i}) for i in range(150)])
    with store.write() as session:
        workspaces.delete_workspace(session, "gone")
    _age(store, "quiet", 16)  # inactive, < 100 events: deleted
    _age(store, "busy", 16)  # inactive but >= 100 events: kept
    _age(store, "old", 4 * 365)  # older than 3 years: deleted (the workspace stays)
    _age(store, None, 200, workspace_id=ids["gone"])  # deleted > 6 months ago: deleted
    policy = RetentionPolicy()
    dry = cleanup(store, policy, dry_run=True)
    assert dry.counts() == {"expired": 151, "inactive_workspace": 1, "deleted_workspace": 2}
    assert _count(store, ids["quiet"]) == 1  # a dry run changes nothing
    progress: list[tuple[int, int]] = []
    report = cleanup(store, policy, progress=lambda done, total: progress.append((done, total)))
    assert report.total == dry.total == 154
    assert progress[-1] == (154, 154)
    assert _count(store, ids["quiet"]) == 0
    assert _count(store, ids["busy"]) == 151
    assert _count(store, ids["gone"]) == 0
    assert _count(store, ids["fresh"]) == 1
    assert _count(store, ids["old"]) == 1  # only events.cleaned remains
    with store.read() as session:
        cleaned: list[Any] = list(
            session.scalars(select(Event).where(Event.type == "events.cleaned"))
        )
        summary = [e for e in cleaned if e.workspace_id is None]
        assert summary[0].payload["counts"]["expired"] == 151
    assert cleanup(store, policy).total == 0
