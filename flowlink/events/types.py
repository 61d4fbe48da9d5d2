"""Native event types, as far as automations are concerned: which may start one."""

from __future__ import annotations

# Native events an automation may listen to (docs/events.md, "On native events"). ``sync.*``
# stands for every ``sync.`` event; ``executions.failed`` is ``executions.ended`` with status
# ``error``.
LISTENABLE_NATIVE_EVENTS: tuple[str, ...] = (
    "error",
    "executions.ended",
    "executions.failed",
    "files.updated",
    "settings.updated",
    "sync.*",
    "sync.configs.created",
    "sync.configs.deleted",
    "sync.configs.updated",
    "sync.connected",
    "sync.disconnected",
    "sync.executions.received",
    "sync.executions.sent",
    "sync.rejected",
    "workspaces.configured",
    "workspaces.updated",
)
# Native events no automation may listen to: too frequent to look up listeners for, or
# the automation machinery's own records (listening to them would loop).
UNLISTENABLE_NATIVE_EVENTS = frozenset(
    {
        "access.denied",
        "apikeys.created",
        "apikeys.deleted",
        "apps.published",
        "events.cleaned",
        "executions.created",
        "executions.started",
        "flows.deleted",
        "flows.updated",
        "memberships.deleted",
        "memberships.updated",
        "runtime.automations.executed",
        "runtime.interactions.triggered",
        "workspaces.app.configured",
        "workspaces.app.installed",
        "users.created",
        "users.disabled",
        "users.enabled",
        "users.password_changed",
        "workspaces.app.uninstalled",
        "workspaces.created",
        "workspaces.deleted",
    }
)
