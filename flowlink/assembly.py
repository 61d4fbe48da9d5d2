"""How the domains are put together: the callbacks lower layers take from higher ones.

The packages form layers (see ``docs/architecture.md``): a package never imports one above
it. Where a lower domain has to act through a higher one, it takes a callback, and this
module hands over the real ones: the store's commit hook (automations dispatch native
events), the parts of a workspace apply (apps, automations) and the flow API's hooks (events
a flow emits start automations; a child may start in a linked workspace).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy.orm import Session

from flowlink.apps import service as apps
from flowlink.automations import sync, triggers
from flowlink.executions.calls import FlowHooks
from flowlink.linking.exchange import RemoteStart, start_remote_execution
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store
from flowlink.store.models import Execution, Workspace
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.spec import WorkspaceBundle

SESSION_HOOKS: tuple[Callable[[type[Session]], None], ...] = (triggers.install,)
APPLY_PARTS: Mapping[str, workspaces.ApplyPart] = {
    "automations": sync.sync_part,
    "apps": apps.sync_part,
}


def store(database_url: str) -> Store:
    """A store whose transactions dispatch native events to the automations listening."""
    return Store(database_url, session_hooks=SESSION_HOOKS)


def open_store(settings: ServerSettings) -> Store:
    """Connect to the store and bring its schema up to date (without loading the API: the
    commands that work on the store directly need only this)."""
    opened = store(settings.database_url)
    opened.migrate()
    return opened


def apply_bundle(
    session: Session,
    bundle: WorkspaceBundle,
    environ: Mapping[str, str],
    *,
    expected_slug: str | None = None,
    max_new_settings: int | None = None,
    secret_key: str | None = None,
) -> workspaces.ApplyResult:
    """Apply a workspace folder with every domain's part (see ``workspaces.apply_bundle``)."""
    return workspaces.apply_bundle(
        session,
        bundle,
        environ,
        expected_slug=expected_slug,
        max_new_settings=max_new_settings,
        secret_key=secret_key,
        parts=APPLY_PARTS,
    )


def _start_remote(
    session: Session,
    workspace: Workspace,
    remote: str,
    *,
    flow: str,
    inputs: dict[str, Any] | None,
    use_remote_flow: bool,
    parent: Execution,
    default_max_runtime: float,
) -> Execution:
    return start_remote_execution(
        session,
        workspace,
        remote,
        RemoteStart(flow=flow, inputs=inputs, use_remote_flow=use_remote_flow),
        parent=parent,
        trigger={"type": "flow", "parent": parent.id},
        default_max_runtime=default_max_runtime,
    )


FLOW_HOOKS = FlowHooks(emit=triggers.emit_from_execution, start_remote=_start_remote)
