"""The worker registry: each worker process registers, heartbeats, and shows as lost when it
stops heartbeating (killed, frozen, or cut off from the store)."""

from __future__ import annotations

import enum
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from flowlink.store.models import WorkerProcess, utcnow
from flowlink.timestamps import format_optional

MISSED_BEATS = 3  # a worker is lost after this many heartbeats did not arrive
KEEP_GONE = timedelta(days=7)  # stopped or lost workers are listed this long


class WorkerStatus(enum.StrEnum):
    """What a registered worker is doing, as far as the store can tell."""

    RUNNING = "running"
    LOST = "lost"
    STOPPED = "stopped"


@dataclass(frozen=True)
class WorkerInfo:
    """One worker as listed by ``GET /api/v1/workers``."""

    id: str
    host: str
    pid: int
    concurrency: int
    busy: int
    warm: int
    status: WorkerStatus
    started_at: datetime
    last_seen: datetime
    stopped_at: datetime | None

    def view(self) -> dict[str, Any]:
        """The JSON form (timestamps RFC 3339 UTC with ``Z``)."""
        return {
            "id": self.id,
            "host": self.host,
            "pid": self.pid,
            "concurrency": self.concurrency,
            "busy": self.busy,
            "warm": self.warm,
            "status": self.status.value,
            "started_at": format_optional(self.started_at),
            "last_seen": format_optional(self.last_seen),
            "stopped_at": format_optional(self.stopped_at),
        }


def register(
    session: Session, worker_id: str, *, concurrency: int, heartbeat_seconds: float
) -> None:
    """Record a worker process that starts now on this host (and forget long-gone ones)."""
    now = utcnow()
    session.execute(
        delete(WorkerProcess).where(
            WorkerProcess.last_seen < now - KEEP_GONE, WorkerProcess.id != worker_id
        )
    )
    row = session.get(WorkerProcess, worker_id) or WorkerProcess(id=worker_id)
    row.host = socket.gethostname()
    row.pid = os.getpid()
    row.concurrency = concurrency
    row.busy = 0
    row.warm = 0
    row.heartbeat_seconds = heartbeat_seconds
    row.started_at = now
    row.last_seen = now
    row.stopped_at = None
    session.add(row)


def heartbeat(session: Session, worker_id: str, *, busy: int, warm: int) -> None:
    """Refresh a worker's last-seen time and load."""
    row = session.get(WorkerProcess, worker_id)
    if row is None:
        return
    row.busy, row.warm, row.last_seen = busy, warm, utcnow()


def stopped(session: Session, worker_id: str) -> None:
    """Mark a worker that shut down cleanly."""
    row = session.get(WorkerProcess, worker_id)
    if row is not None:
        row.busy, row.stopped_at = 0, utcnow()


def status_of(row: WorkerProcess, now: datetime) -> WorkerStatus:
    """Running, lost (``MISSED_BEATS`` heartbeats missed) or stopped."""
    if row.stopped_at is not None:
        return WorkerStatus.STOPPED
    if now - row.last_seen > timedelta(seconds=row.heartbeat_seconds * MISSED_BEATS):
        return WorkerStatus.LOST
    return WorkerStatus.RUNNING


def list_workers(session: Session) -> list[WorkerInfo]:
    """Every registered worker, newest first, with its status."""
    now = utcnow()
    rows = session.scalars(select(WorkerProcess).order_by(WorkerProcess.started_at.desc()))
    return [
        WorkerInfo(
            id=row.id,
            host=row.host,
            pid=row.pid,
            concurrency=row.concurrency,
            busy=row.busy,
            warm=row.warm,
            status=status_of(row, now),
            started_at=row.started_at,
            last_seen=row.last_seen,
            stopped_at=row.stopped_at,
        )
        for row in rows
    ]


def running_count(session: Session) -> int:
    """How many workers heartbeat now."""
    return sum(1 for w in list_workers(session) if w.status is WorkerStatus.RUNNING)


def gone_pids_on_host(session: Session, host: str) -> list[int]:
    """Pids of this host's workers that are lost or stopped (their live metrics must go)."""
    now = utcnow()
    rows = list(session.scalars(select(WorkerProcess).where(WorkerProcess.host == host)))
    running = {row.pid for row in rows if status_of(row, now) is WorkerStatus.RUNNING}
    return sorted({row.pid for row in rows} - running)  # a reused pid is left alone
