"""The durable outbox of a link: messages wait here until the other end acks them."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from flowlink.jsonsafe import repair
from flowlink.store import notify
from flowlink.store.engine import run_core
from flowlink.store.models import LinkOutbox, SyncConfig, Workspace, utcnow


def enqueue(session: Session, sync_config_id: str, message: dict[str, Any]) -> None:
    """Put a message in a link's outbox (in the caller's transaction) and wake its sender."""
    enqueue_many(session, sync_config_id, [message])


def enqueue_many(session: Session, sync_config_id: str, messages: list[dict[str, Any]]) -> None:
    """Put messages in a link's outbox, in this order, and wake its sender once."""
    if not messages:
        return
    created = utcnow()
    session.add_all(
        LinkOutbox(
            sync_config_id=sync_config_id,
            message_id=message["id"],
            type=message["type"],
            body=message,
            created_at=created,
        )
        for message in messages
    )
    notify.announce(session, notify.LINK, sync_config_id)


def pending(session: Session, sync_config_id: str, limit: int) -> list[dict[str, Any]]:
    """The oldest ``limit`` messages not yet acked, in the order they were put in.

    Repaired (see ``flowlink.jsonsafe``): a value stored before strings were checked must
    not make the other end refuse every exchange of the link.
    """
    rows = run_core(session, _PENDING, {"config_id": sync_config_id, "limit": limit}).scalars()
    return repaired(rows)


def repaired(bodies: Iterable[Any]) -> list[dict[str, Any]]:
    """Messages as ``pending`` gives them, from their stored bodies (read by another
    statement, such as a link's look, which reads the outbox with the link's state)."""
    return [repair(body) for body in bodies]


# Built once: every look of a link and every answered exchange reads its outbox.
_PENDING = (
    select(LinkOutbox.body)
    .where(LinkOutbox.sync_config_id == bindparam("config_id"))
    .order_by(LinkOutbox.id)
    .limit(bindparam("limit"))
)


def acknowledge(session: Session, sync_config_id: str, message_ids: Iterable[str]) -> int:
    """Drop acked messages from the outbox; returns how many were still there."""
    ids = list(message_ids)
    dropped = 0
    for start in range(0, len(ids), 500):
        result = session.execute(
            delete(LinkOutbox).where(
                LinkOutbox.sync_config_id == sync_config_id,
                LinkOutbox.message_id.in_(ids[start : start + 500]),
            )
        )
        dropped += result.rowcount  # type: ignore[attr-defined]
    return dropped


def depths_of(session: Session, sync_config_ids: Collection[str]) -> dict[str, int]:
    """How many messages wait for the other end of each of these links, in one query
    (links with an empty outbox omitted)."""
    if not sync_config_ids:
        return {}
    rows = session.execute(
        select(LinkOutbox.sync_config_id, func.count())
        .where(LinkOutbox.sync_config_id.in_(sync_config_ids))
        .group_by(LinkOutbox.sync_config_id)
    )
    return {config_id: count for config_id, count in rows}


def depths(session: Session) -> dict[str, int]:
    """Messages waiting per link (``workspace/sync config``), links with an empty outbox omitted."""
    rows = session.execute(
        select(Workspace.slug, SyncConfig.name, func.count(LinkOutbox.id))
        .join(SyncConfig, SyncConfig.id == LinkOutbox.sync_config_id)
        .join(Workspace, Workspace.id == SyncConfig.workspace_id)
        .group_by(Workspace.slug, SyncConfig.name)
    )
    return {f"{slug}/{name}": count for slug, name, count in rows}
