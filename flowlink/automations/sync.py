"""Syncing a workspace's automations and their event triggers when its folder is applied."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from flowlink.store.models import Automation, AutomationTrigger, Workspace, utcnow
from flowlink.workspaces.service import automation_spec
from flowlink.workspaces.spec import WorkspaceBundle


def sync_part(
    session: Session, workspace: Workspace, bundle: WorkspaceBundle, environ: Mapping[str, str]
) -> list[str]:
    """Apply's part for automations: sync ``automations`` and ``automation_triggers``.

    Automations missing from ``workspace.yml`` are removed; a changed one gets its triggers
    rewritten. Returns the changes (``+slug``, ``~slug``, ``-slug``).
    """
    automations = bundle.spec.automations
    existing = {
        a.slug: a
        for a in session.scalars(select(Automation).where(Automation.workspace_id == workspace.id))
    }
    changes: list[str] = []
    for slug, declared in automations.items():
        spec = automation_spec(declared)
        automation = existing.pop(slug, None)
        if automation is not None and automation.spec == spec:
            continue
        if automation is None:
            automation = Automation(workspace_id=workspace.id, slug=slug)
            session.add(automation)
            changes.append(f"+{slug}")
        else:
            changes.append(f"~{slug}")
            session.execute(
                delete(AutomationTrigger).where(AutomationTrigger.automation_id == automation.id)
            )
        automation.flow_name = declared.flow
        automation.spec = spec
        automation.updated_at = utcnow()
        session.flush()
        for event_type in declared.events:
            session.add(
                AutomationTrigger(
                    workspace_id=workspace.id, automation_id=automation.id, event_type=event_type
                )
            )
    for slug, automation in existing.items():
        session.delete(automation)
        changes.append(f"-{slug}")
    return changes
