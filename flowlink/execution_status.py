"""The statuses of an execution, the one table of moves between them, and ``Outcome``.

Every status change goes through :func:`transition`: the worker's claim, a runner's end,
a cancel, the reaper ending the runs of a worker that died, and a link updating its
mirror. It refuses a move the table does not allow (an ended execution never changes).

This module imports nothing else of flowlink, so every layer can use it (the runtime,
linking, events, the CLI) without loading the executions service.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from flowlink.errors import Conflict


class ExecutionStatus(enum.StrEnum):
    """An execution's status; the values are what the database, the API and links carry."""

    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"  # running, and waiting on a child execution
    SUCCESS = "success"
    ERROR = "error"
    CANCELLED = "cancelled"


QUEUED = ExecutionStatus.QUEUED
RUNNING = ExecutionStatus.RUNNING
WAITING = ExecutionStatus.WAITING
SUCCESS = ExecutionStatus.SUCCESS
ERROR = ExecutionStatus.ERROR
CANCELLED = ExecutionStatus.CANCELLED

#: A runner works on it (tuples: they go into SQL ``IN`` clauses as they are).
ACTIVE: tuple[ExecutionStatus, ...] = (RUNNING, WAITING)
#: Terminal: an ended execution is immutable.
ENDED: tuple[ExecutionStatus, ...] = (SUCCESS, ERROR, CANCELLED)

#: The moves each status allows. A queued execution may end without having run: a cancel,
#: a link that goes away, or a linked workspace that refuses the start.
ALLOWED: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    QUEUED: frozenset({RUNNING, *ENDED}),
    RUNNING: frozenset({WAITING, *ENDED}),
    WAITING: frozenset({RUNNING, *ENDED}),
    SUCCESS: frozenset(),
    ERROR: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(Conflict):
    """A status change the table does not allow (409: the execution is left as it was)."""

    code = "illegal_transition"

    def __init__(self, current: str, new: str) -> None:
        current, new = str(current), str(new)  # plain strings: a member's repr is noisy
        allowed = ", ".join(sorted(ALLOWED.get(as_status(current), ()))) or "none (it has ended)"
        super().__init__(
            f"an execution cannot go from {current!r} to {new!r}; allowed from {current!r}:"
            f" {allowed}",
            details={"status": current, "to": new},
        )


def as_status(value: str) -> ExecutionStatus:
    """The status named ``value``; ``ValueError`` names the known ones if there is none."""
    try:
        return ExecutionStatus(value)
    except ValueError:
        known = ", ".join(ExecutionStatus)
        raise ValueError(f"unknown execution status {value!r}; known: {known}") from None


def is_ended(status: str) -> bool:
    """Whether ``status`` is terminal."""
    return status in ENDED


def transition(current: str, new: str) -> ExecutionStatus:
    """The status to write when ``current`` becomes ``new``; ``IllegalTransition`` if the
    table does not allow it (staying in the same status is not a move either)."""
    target = as_status(new)
    if target not in ALLOWED[as_status(current)]:
        raise IllegalTransition(current, new)
    return target


@dataclass(frozen=True)
class Outcome:
    """How an execution ended, as reported by whoever ran it (a runner, a link, a cancel)."""

    status: ExecutionStatus
    message: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    error_kind: str | None = None
    traceback: str | None = None  # the script's, when a runner reports one

    def __post_init__(self) -> None:
        status = as_status(self.status)
        if status not in ENDED:
            raise ValueError(f"an outcome ends an execution; {str(status)!r} is not an end")
        object.__setattr__(self, "status", status)  # a plain string becomes the member
