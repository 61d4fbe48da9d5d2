"""Readiness: whether this server should be sent traffic (liveness is just "it answers")."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.store.engine import Store, alembic_config

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """The outcome of each readiness check; ready only when all pass."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """True when every check passed."""
        return all(check["ok"] for check in self.checks.values())

    def view(self) -> dict[str, Any]:
        """The JSON form served by ``GET /api/v1/ready``."""
        return {"status": "ready" if self.ready else "not ready", "checks": self.checks}


def readiness(store: Store, running_workers: Callable[[Session], int]) -> Readiness:
    """Check the store answers, its schema is current, and a worker heartbeats.

    ``running_workers`` counts the workers heartbeating (``executions.workers.running_count``;
    passed in, since executions build on observability).
    """
    result = Readiness()
    try:
        with store.read() as session:
            session.execute(select(1))
    except Exception as error:
        result.checks["store"] = {"ok": False, "error": _short(error)}
        result.checks["migrations"] = {"ok": False, "error": "store unreachable"}
        result.checks["workers"] = {"ok": False, "error": "store unreachable"}
        return result
    result.checks["store"] = {"ok": True, "dialect": store.dialect}
    try:
        with store.engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
        expected = set(ScriptDirectory.from_config(alembic_config()).get_heads())
        result.checks["migrations"] = {
            "ok": current == expected,
            "current": sorted(current),
            "expected": sorted(expected),
        }
    except Exception as error:
        result.checks["migrations"] = {"ok": False, "error": _short(error)}
    with store.read() as session:
        running = running_workers(session)
    result.checks["workers"] = {"ok": running > 0, "running": running}
    return result


def _short(error: Exception) -> str:
    """What a public endpoint may say about a failure (the details go to the log)."""
    log.warning("readiness check failed: %s", error)
    return type(error).__name__
