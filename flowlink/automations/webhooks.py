"""Webhooks: automations with ``when.endpoint: true``, called over HTTP with a key.

A webhook's key is stored hashed (``automation_keys``); a public webhook (``public: true``)
needs none. Refused calls are recorded as ``error`` events, aggregated per client address
(:mod:`flowlink.events.rejections`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.automations.triggers import start_automation
from flowlink.errors import Invalid, NotFound, Unauthorized
from flowlink.events.rejections import rejection_log
from flowlink.events.service import record
from flowlink.store.engine import Store
from flowlink.store.models import Automation, AutomationKey, Execution, Workspace, new_id, utcnow
from flowlink.workspaces.service import find_workspace

MAX_CORRELATION_ID = 64  # the width of the correlation_id columns
WEBHOOK_KEY_PREFIX = "whk_"
# Request headers never passed to a webhook's flow (credentials and hop-by-hop noise).
HIDDEN_HEADERS = frozenset(
    {
        "authorization",
        "cookie",
        "proxy-authorization",
        "x-flowlink-key",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "te",
    }
)


def _hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_automation(session: Session, workspace: Workspace, slug: str) -> Automation:
    """An automation of the workspace, or NotFound."""
    automation = session.scalar(
        select(Automation).where(Automation.workspace_id == workspace.id, Automation.slug == slug)
    )
    if automation is None:
        raise NotFound(
            f"automation {slug!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "automation": slug},
        )
    return automation


def get_webhook(session: Session, workspace: Workspace, slug: str) -> Automation:
    """An automation with ``when.endpoint: true``, or NotFound."""
    automation = get_automation(session, workspace, slug)
    if not (automation.spec.get("when") or {}).get("endpoint"):
        raise NotFound(
            f"automation {slug!r} has no webhook (set when.endpoint: true)",
            details={"workspace": workspace.slug, "automation": slug},
        )
    return automation


def is_public(automation: Automation) -> bool:
    """Whether the webhook accepts calls without a key (``public: true``)."""
    return bool(automation.spec.get("public"))


def rotate_webhook_key(session: Session, automation: Automation) -> str:
    """Create (or replace) the webhook key of an automation; the key is returned only now."""
    key = WEBHOOK_KEY_PREFIX + secrets.token_urlsafe(32)
    existing = session.get(AutomationKey, automation.id)
    if existing is None:
        session.add(AutomationKey(automation_id=automation.id, key_hash=_hash_key(key)))
    else:
        existing.key_hash = _hash_key(key)
        existing.created_at = utcnow()
    return key


def ensure_webhook_keys(session: Session, workspace: Workspace) -> dict[str, str]:
    """Give every non-public webhook of the workspace a key; returns the new keys by slug."""
    automations = session.scalars(
        select(Automation).where(Automation.workspace_id == workspace.id)
    ).all()
    have = set(
        session.scalars(
            select(AutomationKey.automation_id).where(
                AutomationKey.automation_id.in_([a.id for a in automations])
            )
        )
    )
    created = {}
    for automation in automations:
        endpoint = (automation.spec.get("when") or {}).get("endpoint")
        if endpoint and not is_public(automation) and automation.id not in have:
            created[automation.slug] = rotate_webhook_key(session, automation)
    return created


def check_webhook_key(session: Session, automation: Automation, key: str | None) -> None:
    """Raise Unauthorized unless the webhook is public or ``key`` is its key."""
    if is_public(automation):
        return
    if not key:
        raise Unauthorized(
            "this webhook needs its key: send 'X-Flowlink-Key: <key>' or '?key=<key>'",
            details={"automation": automation.slug, "reason": "missing_key"},
        )
    stored = session.get(AutomationKey, automation.id)
    if stored is None or not hmac.compare_digest(stored.key_hash, _hash_key(key)):
        raise Unauthorized(
            "wrong webhook key", details={"automation": automation.slug, "reason": "wrong_key"}
        )


def record_webhook_rejected(
    session: Session,
    workspace: Workspace,
    slug: str,
    reason: str,
    http: Mapping[str, Any],
    aggregate: Mapping[str, Any] | None = None,
) -> None:
    """Record a refused webhook call as an ``error`` event (in its own transaction).

    ``aggregate`` (``count``...) says how many refusals the event stands for.
    """
    record(
        session,
        workspace,
        "error",
        {
            "message": f"webhook {slug!r} refused: {reason}",
            "reason": reason,
            "automation": slug,
            **(aggregate or {}),
        },
        extra_source={"automationSlug": slug, "http": dict(http)},
    )


def note_webhook_rejected(
    store: Store, window: float, workspace_slug: str, slug: str, reason: str, http: dict[str, Any]
) -> None:
    """Record a refused webhook call, aggregated per client address and ``window`` seconds."""

    def write(session: Session, aggregate: dict[str, Any]) -> None:
        workspace = find_workspace(session, workspace_slug)
        if workspace is not None:
            record_webhook_rejected(session, workspace, slug, reason, http, aggregate)

    key = ("webhook.rejected", workspace_slug, slug, reason)
    rejection_log(store, window).note(key, http.get("ip"), write)


def webhook_correlation_id(headers: Mapping[str, str]) -> str | None:
    """The ``X-Correlation-Id`` a webhook caller sent (to join a correlation), checked."""
    value = headers.get("x-correlation-id") or None
    if value is not None and len(value) > MAX_CORRELATION_ID:
        raise Invalid(
            f"X-Correlation-Id: at most {MAX_CORRELATION_ID} characters",
            details={"field": "X-Correlation-Id"},
        )
    return value


def filter_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Request headers a webhook's flow may see (credentials removed)."""
    return {k.lower(): v for k, v in headers.items() if k.lower() not in HIDDEN_HEADERS}


def start_webhook(
    session: Session,
    workspace: Workspace,
    automation: Automation,
    inputs: dict[str, Any],
    http: Mapping[str, Any],
    *,
    correlation_id: str | None = None,
) -> Execution | None:
    """Queue the automation's flow for one webhook call (trigger type ``endpoint``)."""
    return start_automation(
        session,
        workspace,
        automation_id=automation.id,
        slug=automation.slug,
        flow=automation.flow_name,
        inputs=inputs,
        trigger_type="endpoint",
        trigger_value=http.get("path"),
        correlation_id=correlation_id or new_id(),
        depth=0,
        http=http,
    )
