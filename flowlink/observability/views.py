"""Response models of health and readiness."""

from __future__ import annotations

from pydantic import Field

from flowlink.views import View


class SandboxView(View):
    """What confines flow scripts in this process."""

    mode: str
    limits: str
    private_tmp: bool
    seccomp: bool
    memory_mb: int | None
    processes: int | None
    cpu_seconds: float | None
    open_files: int | None
    limits_note: str | None = None


class HealthView(View):
    """Liveness."""

    status: str
    store: str = Field(description="sqlite or postgresql")
    sandbox: SandboxView | None


class CheckView(View):
    """One readiness check."""

    ok: bool
    error: str | None = None
    dialect: str | None = None
    current: list[str] | None = None
    expected: list[str] | None = None
    running: int | None = None


class ReadyView(View):
    """Readiness: ready only when every check passed."""

    status: str = Field(description="ready or not ready")
    checks: dict[str, CheckView] = Field(description="store, migrations, workers")
