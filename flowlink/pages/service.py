"""Pages in the store: apply and export, custom domains, who may see a page, what it shows."""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.access import policy
from flowlink.access.service import Principal, identity_principal
from flowlink.apps.service import instance_page
from flowlink.errors import NotFound
from flowlink.events.service import EventFilter, event_view, search
from flowlink.execution_status import ExecutionStatus
from flowlink.executions import service as executions
from flowlink.executions import starts
from flowlink.store.engine import Store
from flowlink.store.models import Page, Workspace
from flowlink.workspaces.page_store import INDEX
from flowlink.workspaces.page_templates import render
from flowlink.workspaces.pages import ACCESS_PUBLIC, PageSpec, page_from_dict

__all__ = [
    "Decision",
    "LoadedPage",
    "PageContext",
    "decide",
    "load_page",
    "page_template_values",
    "recent_events",
    "render_page",
    "run_flow",
    "start_page_flow",
]
PAGE_FLOW_TIMEOUT = 30.0


# --- serving ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedPage:
    """A page and the parts of its workspace a request needs (detached from the session)."""

    workspace: Workspace
    spec: PageSpec
    config: dict[str, Any]


def load_page(session: Session, workspace_slug: str, slug: str) -> LoadedPage:
    """The page ``slug`` of a workspace, or :class:`NotFound` (the same for both unknowns)."""
    row = session.execute(
        select(Workspace, Page)
        .join(Page, Page.workspace_id == Workspace.id)
        .where(Workspace.slug == workspace_slug, Page.slug == slug)
    ).first()
    if row is None:
        loaded = _instance_page(session, workspace_slug, slug)
        if loaded is None:
            raise NotFound(
                f"page {slug!r} not found", details={"workspace": workspace_slug, "page": slug}
            )
        return loaded
    workspace, page = row
    spec = page_from_dict(page.slug, page.template, page.meta_text, page.spec)
    return LoadedPage(workspace=workspace, spec=spec, config=dict(workspace.config_rendered or {}))


def _instance_page(session: Session, workspace_slug: str, slug: str) -> LoadedPage | None:
    """``<instance>.<page>``: a page of an app instance, with the instance's config; its
    flows run as the instance's (``<instance>.<flow>``)."""
    instance, dot, page_slug = slug.partition(".")
    if not dot:
        return None
    workspace = session.scalar(select(Workspace).where(Workspace.slug == workspace_slug))
    if workspace is None:
        return None
    found = instance_page(session, workspace, instance, page_slug)
    if found is None:
        return None
    page, config = found
    spec = page_from_dict(slug, page["template"], page.get("meta"), page.get("spec") or {})
    spec = replace(
        spec,
        flow=f"{instance}.{spec.flow}" if spec.flow else None,
        form_flow=f"{instance}.{spec.form_flow}" if spec.form_flow else None,
        event_types=tuple(f"{instance}.{t}" for t in spec.event_types),
    )
    return LoadedPage(workspace=workspace, spec=spec, config=config)


class Decision(enum.Enum):
    """Whether a visitor sees a page."""

    ALLOW = "allow"
    LOGIN = "login"  # nobody is logged in: send them to the login
    DENY = "deny"  # logged in, but not allowed: the page does not exist for them


def decide(principal: Principal | None, workspace: Workspace, page: PageSpec) -> Decision:
    """Public pages: everyone. Others: a caller who may read the page and, for a list of
    roles, whose workspace role is in it (organization admins see every page)."""
    if page.access == ACCESS_PUBLIC:
        return Decision.ALLOW
    if principal is None:
        return Decision.LOGIN
    if policy.is_org_admin(principal):
        return Decision.ALLOW
    if not policy.allows(principal, "read", "pages", workspace, {"page": page.slug}):
        return Decision.DENY
    if isinstance(page.access, tuple):
        roles = {principal.role, principal.memberships.get(workspace.id)} - {None}
        if not roles & set(page.access):
            return Decision.DENY
    return Decision.ALLOW


def recent_events(
    session: Session, workspace: Workspace, types: Sequence[str], limit: int
) -> list[dict[str, Any]]:
    """The newest events of the given types, newest first, as envelopes."""
    if not types:
        return []
    found = search(session, workspace, EventFilter(types=tuple(types)), limit=limit)
    return [event_view(e) for e in found]


def start_page_flow(
    session: Session,
    workspace: Workspace,
    page: PageSpec,
    flow: str,
    inputs: Mapping[str, Any],
    principal: Principal | None,
    *,
    default_max_runtime: float,
    purpose: str = "view",
) -> str:
    """Queue a run of ``flow`` for a page request (view or form); returns the execution id.

    It acts as the ``page`` identity of the workspace (like a webhook), and records which
    visitor asked for it in its trigger.
    """
    identity = identity_principal("page", f"page:{page.slug}", workspace)
    trigger: dict[str, Any] = {"type": "page", "page": page.slug, "purpose": purpose}
    if principal is not None:
        trigger["visitor"] = principal.username
    execution = executions.create_execution(
        session,
        workspace,
        flow_name=flow,
        inputs=dict(inputs),
        user_id=principal.user_id if principal else None,
        trigger=trigger,
        principal=identity.describe(),
        max_runtime=PAGE_FLOW_TIMEOUT,
        default_max_runtime=default_max_runtime,
    )
    return execution.id


@dataclass(frozen=True)
class FlowResult:
    """How a page's flow run ended."""

    status: str
    outputs: Any
    message: str | None

    @property
    def ok(self) -> bool:
        """Whether it succeeded."""
        return self.status == ExecutionStatus.SUCCESS


async def run_flow(store: Store, start: Callable[[], str], timeout: float) -> FlowResult:
    """Start an execution with ``start`` (in a thread) and wait for its end, holding no thread.

    After ``timeout`` seconds the result says it did not finish.
    """
    execution_id = await asyncio.to_thread(start)
    await starts.wait_for_end(store, execution_id, timeout)
    status, outputs, message = await asyncio.to_thread(starts.outcome, store, execution_id)
    if status not in executions.ENDED:
        message = f"the flow did not finish within {PAGE_FLOW_TIMEOUT:g} s"
    return FlowResult(status, outputs, message)


@dataclass(frozen=True)
class PageContext:
    """What a request adds to a page's template values."""

    base_url: str
    query: Mapping[str, str]
    csrf_token: str
    user: str | None
    data: Any = None
    events: Sequence[Mapping[str, Any]] = ()
    result: Any = None
    error: str | None = None


def page_template_values(page: LoadedPage, context: PageContext) -> dict[str, Any]:
    """Everything a template sees: config (never settings or secrets), data, events, ..."""
    data = context.data
    if data is None and page.spec.flow is None and page.spec.event_types:
        data = list(context.events)
    return {
        "config": page.config,
        "data": data if data is not None else {},
        "events": list(context.events),
        "result": context.result,
        "error": context.error,
        "query": dict(context.query),
        "csrf_token": context.csrf_token,
        "user": context.user,
        "page": {
            "slug": page.spec.slug,
            "title": page.spec.title or page.spec.slug,
            "url": context.base_url + ("" if page.spec.slug == INDEX else page.spec.slug),
        },
        "workspace": {"slug": page.workspace.slug, "name": page.workspace.name},
        "base_url": context.base_url,
    }


def render_page(page: LoadedPage, context: PageContext) -> str:
    """Render the page (``page_templates.RenderError`` on a template failure)."""
    return render(page.spec.template, page_template_values(page, context))
