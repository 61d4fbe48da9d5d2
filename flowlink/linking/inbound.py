"""The gate of a sync endpoint: nothing in an exchange is acted on unless it passes here.

``authenticate_exchange`` finds the sync config, refuses a disabled one, verifies the RFC 9421
signature against the configured remote public keys and records the signature's nonce, so
the same signed request is never accepted twice (the nonce table is in the store, so this
holds across server processes). A refusal is a ``SyncRejected`` with its reason; the caller
answers 401 and records ``sync.rejected`` with ``record_rejection`` in a transaction of its
own, since the request's transaction is rolled back. ``note_rejection`` does that through
the aggregation of ``flowlink.events.rejections``: one event per source and window.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from flowlink.errors import Unauthorized
from flowlink.events.rejections import rejection_log
from flowlink.events.service import record
from flowlink.linking import signing
from flowlink.linking.service import get_sync_config, public_keys_of
from flowlink.observability import metrics
from flowlink.store.engine import Store
from flowlink.store.models import LinkNonce, SyncConfig, Workspace, utcnow
from flowlink.workspaces.service import find_workspace

# A nonce must be remembered for as long as its signature could still be accepted.
NONCE_MEMORY = signing.MAX_AGE + signing.CLOCK_SKEW + timedelta(seconds=5)
FORGET_EVERY = 10.0  # seconds between clean-ups of nonces too old to matter
_last_forget = 0.0


class SyncRejected(Unauthorized):
    """An exchange refused before anything in it was acted on (HTTP 401)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"sync rejected ({reason}): {message}", details={"reason": reason})
        self.reason = reason
        self.explanation = message


def authenticate_exchange(
    session: Session,
    workspace: Workspace,
    config_name: str,
    *,
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
) -> SyncConfig:
    """The sync config an incoming exchange is for, once its signature holds; else raise.

    An unknown config is ``NotFound``; every other refusal is ``SyncRejected``.
    """
    config = get_sync_config(session, workspace, config_name)
    check_exchange(session, config, method=method, url=url, headers=headers, body=body)
    return config


def check_exchange(
    session: Session,
    config: SyncConfig,
    *,
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
) -> None:
    """Refuse (``SyncRejected``) an exchange for ``config`` unless its signature holds and its
    nonce is new; the nonce is then remembered."""
    if not config.enabled:
        raise SyncRejected("disabled", f"sync config {config.name!r} is disabled")
    try:
        verified = signing.verify_request(public_keys_of(config), method, url, headers, body)
    except signing.SignatureRejected as exc:
        raise SyncRejected(exc.reason, exc.message) from None
    remember_nonce(session, config, verified.nonce)


_NONCES = LinkNonce.__table__
_REMEMBER = {
    dialect.dialect.name: dialect.insert(_NONCES).on_conflict_do_nothing().returning(_NONCES.c.id)
    for dialect in (postgresql, sqlite)
}


def remember_nonce(session: Session, config: SyncConfig, nonce: str) -> None:
    """Record a nonce; ``SyncRejected("replayed")`` if this config has seen it before.

    One ``INSERT ... ON CONFLICT DO NOTHING``, built once and run on the connection: no
    savepoint, no ORM flush and no statement to build, since every exchange (a thousand
    renewed polls too) pays for it.
    """
    current = utcnow()
    if len(nonce) > 128:
        raise SyncRejected("malformed", "the nonce is longer than 128 characters")
    connection = session.connection()
    insert = _REMEMBER.get(connection.dialect.name, _REMEMBER["sqlite"])
    values = {"sync_config_id": config.id, "nonce": nonce, "seen_at": current}
    inserted = connection.execute(insert, values).scalar()
    if inserted is None:
        raise SyncRejected("replayed", "this signed request was received before")
    global _last_forget
    if time.monotonic() - _last_forget >= FORGET_EVERY:  # not on every request: it adds up
        _last_forget = time.monotonic()
        session.execute(delete(LinkNonce).where(LinkNonce.seen_at < current - NONCE_MEMORY))


def seen_nonces(session: Session, config: SyncConfig) -> list[str]:
    """The nonces remembered for a config (for diagnostics and tests)."""
    return list(
        session.scalars(select(LinkNonce.nonce).where(LinkNonce.sync_config_id == config.id))
    )


def record_rejection(
    session: Session,
    workspace: Workspace,
    config_name: str,
    rejection: SyncRejected,
    http: Mapping[str, Any] | None = None,
    aggregate: Mapping[str, Any] | None = None,
) -> None:
    """Record ``sync.rejected`` (in its own transaction: the request's was rolled back).

    ``aggregate`` (``count``...) says how many refusals the event stands for.
    """
    record(
        session,
        workspace,
        "sync.rejected",
        {
            "syncConfig": config_name,
            "reason": rejection.reason,
            "message": rejection.explanation,
            **(aggregate or {}),
        },
        extra_source={"http": dict(http)} if http else None,
    )


def note_rejection(
    store: Store,
    window: float,
    workspace_slug: str,
    config_name: str,
    rejection: SyncRejected,
    http: Mapping[str, Any],
) -> None:
    """Record a refused exchange, aggregated per client address and ``window`` seconds."""
    metrics.link_rejected(rejection.reason)  # every refusal counts, whatever the aggregation

    def write(session: Session, aggregate: dict[str, Any]) -> None:
        workspace = find_workspace(session, workspace_slug)
        if workspace is not None:
            record_rejection(session, workspace, config_name, rejection, http, aggregate)

    key = ("sync.rejected", workspace_slug, config_name, rejection.reason)
    rejection_log(store, window).note(key, http.get("client"), write)
