"""Authorization: the single place that decides whether a principal may act on a workspace."""

from __future__ import annotations

from flowlink.access.service import Principal
from flowlink.errors import NotFound
from flowlink.store.models import Workspace

ACTIONS = ("read", "create", "update", "delete", "execute", "manage")
SUBJECTS = (
    "workspace",
    "flows",
    "executions",
    "settings",
    "events",
    "automations",
    "pages",
    "apps",
    "sync_configs",
    "tokens",
)


def authorize(principal: Principal, action: str, subject: str, workspace: Workspace | None) -> None:
    """Raise unless ``principal`` may do ``action`` on ``subject`` in ``workspace``.

    Organization admins may do everything. A token scoped to a workspace sees only that
    workspace (any other is reported as not found, so its existence does not leak).
    """
    if action not in ACTIONS or subject not in SUBJECTS:
        raise ValueError(f"unknown permission {action} {subject}")
    if principal.is_admin and principal.workspace_id is None:
        return
    if workspace is not None and principal.workspace_id not in (None, workspace.id):
        raise NotFound(
            f"workspace {workspace.slug!r} not found", details={"workspace": workspace.slug}
        )
