"""Event retention: what is deleted, when, and the periodic cleanup job.

Defaults (all configurable): events are kept 3 years; a workspace inactive for more than 15 days
with fewer than 100 events loses its events; the events of a deleted workspace are kept 6 months
after its last event (its ``workspaces.deleted``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from flowlink.events.service import record
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store
from flowlink.store.models import Event, Workspace, utcnow

log = logging.getLogger(__name__)
EXPIRED = "expired"
INACTIVE = "inactive_workspace"
DELETED = "deleted_workspace"


@dataclass(frozen=True)
class RetentionPolicy:
    """How long events are kept."""

    keep_days: float = 3 * 365
    inactive_days: float = 15
    inactive_min_events: int = 100
    deleted_workspace_days: float = 183

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> RetentionPolicy:
        """The policy configured for a server."""
        return cls(
            keep_days=settings.event_retention_days,
            inactive_days=settings.event_inactive_days,
            inactive_min_events=settings.event_inactive_min_events,
            deleted_workspace_days=settings.event_deleted_workspace_days,
        )


@dataclass(frozen=True)
class CleanupItem:
    """One unit of deletion: a workspace's events for one reason."""

    workspace_id: str | None
    workspace_slug: str | None
    reason: str
    count: int
    before: datetime | None = None  # delete only events older than this (EXPIRED)


@dataclass
class CleanupReport:
    """What a cleanup deleted (or, in a dry run, would delete)."""

    dry_run: bool
    items: list[CleanupItem] = field(default_factory=list)

    @property
    def total(self) -> int:
        """Events deleted (or to delete)."""
        return sum(item.count for item in self.items)

    def counts(self) -> dict[str, int]:
        """Event counts by reason."""
        result = {EXPIRED: 0, INACTIVE: 0, DELETED: 0}
        for item in self.items:
            result[item.reason] += item.count
        return result

    def view(self) -> dict[str, Any]:
        """A JSON summary."""
        return {
            "dryRun": self.dry_run,
            "total": self.total,
            "counts": self.counts(),
            "workspaces": [
                {
                    "workspaceId": i.workspace_id,
                    "workspaceSlug": i.workspace_slug,
                    "reason": i.reason,
                    "count": i.count,
                }
                for i in self.items
            ],
        }


def plan_cleanup(session: Session, policy: RetentionPolicy, now: datetime) -> list[CleanupItem]:
    """Work out what the policy deletes at ``now`` (nothing is changed)."""
    expire_before = now - timedelta(days=policy.keep_days)
    inactive_before = now - timedelta(days=policy.inactive_days)
    deleted_before = now - timedelta(days=policy.deleted_workspace_days)
    slugs = {wid: slug for wid, slug in session.execute(select(Workspace.id, Workspace.slug))}
    items: list[CleanupItem] = []
    whole: set[str | None] = set()
    stats = session.execute(
        select(Event.workspace_id, func.count(), func.max(Event.seq)).group_by(Event.workspace_id)
    ).all()
    last_times = {}
    for workspace_id, _count, max_seq in stats:
        last_times[workspace_id] = session.scalar(
            select(Event.created_at).where(Event.seq == max_seq)
        )
    for workspace_id, count, _max_seq in stats:
        last = last_times[workspace_id]
        if workspace_id is None or last is None:
            continue
        if workspace_id in slugs:
            if last < inactive_before and count < policy.inactive_min_events:
                items.append(CleanupItem(workspace_id, slugs[workspace_id], INACTIVE, count))
                whole.add(workspace_id)
        elif last < deleted_before:
            items.append(CleanupItem(workspace_id, None, DELETED, count))
            whole.add(workspace_id)
    expired = session.execute(
        select(Event.workspace_id, func.count())
        .where(Event.created_at < expire_before)
        .group_by(Event.workspace_id)
    ).all()
    for workspace_id, count in expired:
        if workspace_id in whole or not count:
            continue
        items.append(
            CleanupItem(workspace_id, slugs.get(workspace_id or ""), EXPIRED, count, expire_before)
        )
    return items


def cleanup(
    store: Store,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> CleanupReport:
    """Apply the retention policy (one transaction per workspace) and record ``events.cleaned``.

    ``progress(done, total)`` is called as events go. A dry run only reports.
    """
    now = now or utcnow()
    with store.read() as session:
        items = plan_cleanup(session, policy, now)
    report = CleanupReport(dry_run=dry_run, items=items)
    if dry_run or not items:
        return report
    done = 0
    for item in items:
        with store.write() as session:
            statement = delete(Event).where(
                Event.workspace_id.is_(None)
                if item.workspace_id is None
                else Event.workspace_id == item.workspace_id
            )
            if item.before is not None:
                statement = statement.where(Event.created_at < item.before)
            session.execute(statement)
            if item.reason == EXPIRED and item.workspace_id is not None:
                workspace = session.get(Workspace, item.workspace_id)
                if workspace is not None:
                    record(
                        session,
                        workspace,
                        "events.cleaned",
                        {"reason": EXPIRED, "count": item.count, "before": item.before},
                    )
        done += item.count
        if progress:
            progress(done, report.total)
    with store.write() as session:
        record(session, None, "events.cleaned", report.view())
    return report


def retention_job(store: Store, policy: RetentionPolicy) -> Callable[[], None]:
    """One periodic cleanup run, for the server's background tasks."""

    def run() -> None:
        report = cleanup(store, policy)
        if report.total:
            log.info("event retention deleted %d events", report.total)

    return run
