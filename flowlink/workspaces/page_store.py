"""Pages and custom domains in the store: applying, exporting, looking up."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.errors import Conflict
from flowlink.store.models import CustomDomain, Page, Workspace, utcnow
from flowlink.timestamps import format_timestamp

from .pages import ACCESS_MEMBERS, PageSpec, page_to_dict

__all__ = [
    "INDEX",
    "claim_domains",
    "find_page",
    "list_pages",
    "page_view",
    "stored_pages",
    "sync_pages",
    "workspace_for_domain",
]

INDEX = "index"


# --- apply / export ---------------------------------------------------------------------------


def sync_pages(session: Session, workspace: Workspace, pages: Mapping[str, PageSpec]) -> list[str]:
    """Make the workspace's stored pages equal ``pages``; returns ``+slug``/``~slug``/``-slug``."""
    existing = {
        p.slug: p for p in session.scalars(select(Page).where(Page.workspace_id == workspace.id))
    }
    changes: list[str] = []
    for slug, spec in pages.items():
        stored = existing.pop(slug, None)
        data = page_to_dict(spec)
        if stored is None:
            session.add(
                Page(
                    workspace_id=workspace.id,
                    slug=slug,
                    template=spec.template,
                    meta_text=spec.meta_text,
                    spec=data,
                )
            )
            changes.append(f"+{slug}")
        elif (stored.template, stored.meta_text, stored.spec) != (
            spec.template,
            spec.meta_text,
            data,
        ):
            stored.template, stored.meta_text, stored.spec = spec.template, spec.meta_text, data
            stored.updated_at = utcnow()
            changes.append(f"~{slug}")
    for slug, stored in existing.items():
        session.delete(stored)
        changes.append(f"-{slug}")
    return changes


def stored_pages(session: Session, workspace: Workspace) -> tuple[dict[str, str], dict[str, str]]:
    """The workspace's page templates and ``.yml`` texts, by slug (for export)."""
    templates: dict[str, str] = {}
    metas: dict[str, str] = {}
    for page in list_pages(session, workspace):
        templates[page.slug] = page.template
        if page.meta_text is not None:
            metas[page.slug] = page.meta_text
    return templates, metas


def list_pages(session: Session, workspace: Workspace) -> list[Page]:
    """All pages of a workspace, by slug."""
    return list(
        session.scalars(select(Page).where(Page.workspace_id == workspace.id).order_by(Page.slug))
    )


def page_view(page: Page, workspace: Workspace) -> dict[str, Any]:
    """The API representation of a page (the template included)."""
    return {
        "slug": page.slug,
        "url": f"/pages/{workspace.slug}/" + ("" if page.slug == INDEX else page.slug),
        "title": page.spec.get("title"),
        "access": page.spec.get("access", ACCESS_MEMBERS),
        "flow": page.spec.get("flow"),
        "events": page.spec.get("events"),
        "form": page.spec.get("form"),
        "updated_at": format_timestamp(page.updated_at),
    }


def claim_domains(session: Session, workspace: Workspace, domains: Sequence[str]) -> list[str]:
    """Make ``workspace`` the owner of exactly ``domains`` (canonical names).

    A domain another workspace claims is a :class:`Conflict` naming that workspace (the
    caller's transaction then changes nothing).
    """
    wanted = list(dict.fromkeys(domains))
    if wanted:
        owners = session.execute(
            select(CustomDomain.domain, Workspace.slug)
            .join(Workspace, Workspace.id == CustomDomain.workspace_id)
            .where(CustomDomain.domain.in_(wanted), CustomDomain.workspace_id != workspace.id)
        ).all()
        if owners:
            domain, owner = min(owners)
            index = wanted.index(domain)
            raise Conflict(
                f"workspace.yml: customDomains[{index}]: {domain!r} is already claimed by"
                f" workspace {owner!r}",
                details={
                    "file": "workspace.yml",
                    "field": f"customDomains[{index}]",
                    "domain": domain,
                    "owner": owner,
                },
            )
    existing = {
        d.domain: d
        for d in session.scalars(
            select(CustomDomain).where(CustomDomain.workspace_id == workspace.id)
        )
    }
    changes: list[str] = []
    for domain in wanted:
        if existing.pop(domain, None) is None:
            session.add(CustomDomain(domain=domain, workspace_id=workspace.id))
            changes.append(f"+{domain}")
    for domain, row in existing.items():
        session.delete(row)
        changes.append(f"-{domain}")
    return changes


def workspace_for_domain(session: Session, domain: str) -> str | None:
    """The slug of the workspace that serves ``domain`` (canonical), or None."""
    return session.scalar(
        select(Workspace.slug)
        .join(CustomDomain, CustomDomain.workspace_id == Workspace.id)
        .where(CustomDomain.domain == domain)
    )


def find_page(session: Session, workspace: Workspace, slug: str) -> Page | None:
    """The page with this slug, or None."""
    return session.scalar(select(Page).where(Page.workspace_id == workspace.id, Page.slug == slug))
