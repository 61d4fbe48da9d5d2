"""Cron schedules: a loop in the server that fires every due slot exactly once.

Several servers may share one PostgreSQL store: each slot is claimed by inserting the unique
``(automation_id, slot)`` row of ``schedule_slots`` in the same transaction that queues the
execution, so exactly one server wins a slot and a crash between the two is impossible.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from croniter import croniter
from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flowlink.automations.triggers import start_automation
from flowlink.background import BackgroundTasks
from flowlink.events.retention import RetentionPolicy, retention_job
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store
from flowlink.store.models import Automation, ScheduleSlot, Workspace, new_id, utcnow
from flowlink.timestamps import format_timestamp

log = logging.getLogger(__name__)
DEFAULT_GRACE = timedelta(seconds=90)


def latest_slot(expression: str, now: datetime) -> datetime:
    """The newest time at or before ``now`` that the cron expression (UTC) matches."""
    start = now.replace(microsecond=0) + timedelta(microseconds=1)
    slot: datetime = croniter(expression, start).get_prev(datetime)
    return slot


def _claim(session: Session, automation_id: str, slot: datetime) -> bool:
    """Insert the slot row; False when another server (or an earlier tick) already did."""
    dialect = session.get_bind().dialect.name
    values = {"automation_id": automation_id, "slot": slot, "created_at": utcnow()}
    statement: Any
    if dialect == "postgresql":
        statement = postgresql.insert(ScheduleSlot).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        statement = sqlite.insert(ScheduleSlot).values(**values).on_conflict_do_nothing()
    else:  # pragma: no cover - only the two supported backends
        statement = insert(ScheduleSlot).values(**values)
    inserted = session.execute(statement.returning(ScheduleSlot.id)).scalar()
    return inserted is not None


def fire_due(
    session: Session, now: datetime, *, grace: timedelta = DEFAULT_GRACE
) -> list[tuple[str, datetime, str | None]]:
    """Fire every schedule slot that is due at ``now`` and not fired yet.

    A slot older than ``grace`` (a server that was down) is skipped rather than replayed.
    Returns ``(automation slug, slot, execution id)`` for the slots this call fired.
    """
    fired: list[tuple[str, datetime, str | None]] = []
    rows = session.execute(
        select(Automation, Workspace).join(Workspace, Workspace.id == Automation.workspace_id)
    ).all()
    for automation, workspace in rows:
        schedules = (automation.spec.get("when") or {}).get("schedules") or []
        if not schedules:
            continue
        due: dict[datetime, str] = {}
        for expression in schedules:
            try:
                slot = latest_slot(expression, now)
            except (ValueError, KeyError):  # validated at apply; never stop the loop
                continue
            # A slot from before the automation was (re)applied is not its slot: applying at
            # 09:47:36 must not fire the 09:47 slot at once.
            if slot < now - grace or slot < automation.updated_at:
                continue
            due.setdefault(slot, expression)
        for slot, expression in sorted(due.items()):
            if not _claim(session, automation.id, slot):
                continue
            execution = start_automation(
                session,
                workspace,
                automation_id=automation.id,
                slug=automation.slug,
                flow=automation.flow_name,
                inputs={"schedule": expression, "slot": format_timestamp(slot)},
                trigger_type="schedule",
                trigger_value=expression,
                correlation_id=new_id(),
                depth=0,
                extra_trigger={"slot": format_timestamp(slot)},
            )
            execution_id = execution.id if execution else None
            if execution_id:
                session.execute(
                    update(ScheduleSlot)
                    .where(ScheduleSlot.automation_id == automation.id, ScheduleSlot.slot == slot)
                    .values(execution_id=execution_id)
                )
            fired.append((automation.slug, slot, execution_id))
    return fired


class Scheduler:
    """The scheduler of a server process: ``tick`` every ``interval`` seconds as a job of the
    process's ``BackgroundTasks`` (``schedule``); it can also be called directly (tests)."""

    def __init__(
        self,
        store: Store,
        *,
        interval: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
        grace: timedelta = DEFAULT_GRACE,
    ) -> None:
        self.store = store
        self.interval = interval
        self.clock = clock
        self.grace = grace

    def tick(self, now: datetime | None = None) -> list[tuple[str, datetime, str | None]]:
        """Fire the slots due now (one transaction)."""
        with self.store.write() as session:
            return fire_due(session, now or self.clock(), grace=self.grace)

    def schedule(self, tasks: BackgroundTasks) -> None:
        """Tick every ``interval`` seconds, the first time at once (a failed tick is retried)."""
        tasks.every("scheduler", self.interval, self.tick, first="now")


def schedule_event_jobs(tasks: BackgroundTasks, store: Store, settings: ServerSettings) -> None:
    """Add the scheduler and the event retention job of a server to its background tasks.

    An interval of 0 (``FLOWLINK_SCHEDULER_INTERVAL``, ``FLOWLINK_EVENT_CLEANUP_INTERVAL``)
    turns a job off.
    """
    Scheduler(store, interval=settings.scheduler_interval).schedule(tasks)
    tasks.every(
        "event retention",
        settings.event_cleanup_interval,
        retention_job(store, RetentionPolicy.from_settings(settings)),
        first="later",
    )
