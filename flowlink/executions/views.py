"""Response models of executions, their logs and the worker registry."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class AppRef(View):
    """Which app instance and version an execution's flow belongs to."""

    instance: str | None
    app: str | None
    version: str | None


class LinkRole(View):
    """How an execution relates to a workspace link."""

    sync_config: str
    role: str
    origin_execution_id: str | None


class ExecutionView(View):
    """An execution; ``children``, ``script`` and ``link`` only where the answer has them."""

    id: str
    workspace: str
    name: str | None
    status: str
    message: str | None
    input_value: Any = Field(description="The inputs (free-form JSON)")
    output_value: Any = Field(description="The outputs (free-form JSON)")
    error_kind: str | None
    created_at: Timestamp
    started_at: Timestamp | None
    ended_at: Timestamp | None
    duration: float | None = Field(description="Seconds from start to end")
    parent_id: str | None
    correlation_id: str | None
    depth: int
    max_runtime: float | None
    trigger: dict[str, Any] | None = Field(description="What started it (type and its details)")
    user_id: str | None
    mirrored: bool
    app: AppRef | None = None
    children: list[str] | None = None
    script: str | None = None
    link: LinkRole | None = None


class ExecutionList(View):
    """A page of executions, newest first."""

    items: list[ExecutionView]
    next_cursor: str | None = Field(description="Pass as before= for the next page")


class ExecutionBatchView(View):
    """The executions a batch started, in order."""

    items: list[ExecutionView]


class LogLine(View):
    """One log line of an execution."""

    id: int
    created_at: Timestamp
    line: str


class LogPage(View):
    """Log lines after a position, and the execution's status."""

    items: list[LogLine]
    status: str


class ExecutionAccepted(View):
    """An execution that was started and has not ended yet."""

    id: str
    status: str


class WorkerView(View):
    """A registered worker process."""

    id: str
    host: str
    pid: int
    concurrency: int
    busy: int
    warm: int
    status: str
    started_at: Timestamp
    last_seen: Timestamp
    stopped_at: Timestamp | None


class WorkerList(View):
    """Every registered worker process."""

    items: list[WorkerView]
