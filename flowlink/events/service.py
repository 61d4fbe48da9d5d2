"""Recording events. Every event is written in the transaction of the change it records."""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, cast, false, func, insert, or_, select, text
from sqlalchemy.orm import Session

from flowlink.errors import Invalid
from flowlink.events.types import LISTENABLE_NATIVE_EVENTS
from flowlink.observability import metrics
from flowlink.store import notify
from flowlink.store.models import Event, Workspace, new_id, utcnow
from flowlink.timestamps import format_timestamp, parse_timestamp

EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_PAYLOAD_BYTES = 100_000
NATIVE_PENDING = "flowlink_native_events"
"""``session.info`` key: listenable native events of this transaction, dispatched at commit."""
DISPATCHING = "flowlink_dispatching_native"
UNHEARD = "flowlink_unheard_workspaces"
"""``session.info`` key: workspaces this transaction read to have no automation listening
to any event (``note_unheard``): their native events need no lookup of listeners."""
_LISTENABLE = frozenset(t for t in LISTENABLE_NATIVE_EVENTS if not t.endswith("*"))


def note_unheard(session: Session, workspace_id: str) -> None:
    """This transaction read that no automation of the workspace listens to an event (a
    statement it made anyway told): its native events are dispatched without a lookup."""
    session.info.setdefault(UNHEARD, set()).add(workspace_id)


def _remember_native(session: Session, row: Mapping[str, Any]) -> None:
    """Keep a listenable native event for ``flowlink.automations.triggers.dispatch_native``."""
    # Events recorded while native events are dispatched (trigger records, depth-limit
    # errors) are not dispatched again: one round per transaction, never a loop.
    if row["type"] in _LISTENABLE and row.get("workspace_id") and not session.info.get(DISPATCHING):
        session.info.setdefault(NATIVE_PENDING, []).append(dict(row))


class PayloadTooLarge(Invalid):
    """A custom event's payload is over the size limit (HTTP 413)."""

    code = "payload_too_large"
    status = 413


def validate_event_type(event_type: str) -> None:
    """Reject a type name outside ``^[A-Za-z0-9._-]{1,128}$``."""
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
        raise Invalid(
            f"invalid event type {event_type!r}: use 1-128 of A-Z a-z 0-9 . _ -",
            details={"field": "type"},
        )


def _json_default(value: Any) -> Any:
    """What an event payload stores for a value JSON cannot hold (a time in the one format)."""
    return format_timestamp(value) if isinstance(value, datetime) else str(value)


def event_row(
    workspace_id: str | None,
    workspace_slug: str | None,
    event_type: str,
    payload: Any = None,
    *,
    correlation_id: str | None = None,
    execution_id: str | None = None,
    user_id: str | None = None,
    extra_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The stored row of one event, as column values (the envelope: docs/events.md)."""
    try:
        body = json.dumps(payload, separators=(",", ":"))
    except TypeError:  # e.g. a datetime: store what JSON can hold
        body = json.dumps(payload, separators=(",", ":"), default=_json_default)
        payload = json.loads(body)
    source: dict[str, Any] = {
        "workspaceId": workspace_id,
        "workspaceSlug": workspace_slug,
        "correlationId": correlation_id,
        "executionId": execution_id,
        "userId": user_id,
    }
    if extra_source:
        source.update(extra_source)
    return {
        "id": new_id(),
        "workspace_id": workspace_id,
        "type": event_type,
        "created_at": utcnow(),
        "size": len(body.encode()),
        "source": {k: v for k, v in source.items() if v is not None},
        "payload": payload,
        "correlation_id": correlation_id,
    }


def record(
    session: Session,
    workspace: Workspace | None,
    event_type: str,
    payload: Any = None,
    **kwargs: Any,
) -> Event:
    """Add an event to the current transaction and announce it once committed."""
    row = event_row(
        workspace.id if workspace else None,
        workspace.slug if workspace else None,
        event_type,
        payload,
        **kwargs,
    )
    event = Event(**row)
    session.add(event)
    _remember_native(session, row)
    notify.announce(session, notify.EVENTS, workspace.id if workspace else "")
    metrics.count_events(session, [workspace.slug if workspace else None])
    return event


def record_row(session: Session, row: dict[str, Any]) -> None:
    """Record one event row (from ``event_row``) in this transaction, the cheapest way per
    backend: on SQLite a plain insert at once (a local call); on PostgreSQL an ORM object
    that goes to the server with the transaction's other inserts when it flushes (a round
    trip less than an insert of its own)."""
    if session.get_bind().dialect.name == "sqlite":
        record_rows(session, [row])
        return
    session.add(Event(**row))
    _remember_native(session, row)
    notify.announce(session, notify.EVENTS, row.get("workspace_id") or "")
    metrics.count_events(session, [row["source"].get("workspaceSlug")])


def record_rows(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert many events (rows from ``event_row``) in one statement and announce them."""
    if not rows:
        return
    insert_rows(session, rows)
    for row in rows:
        _remember_native(session, row)
    for workspace_id in dict.fromkeys(row.get("workspace_id") or "" for row in rows):
        notify.announce(session, notify.EVENTS, workspace_id)


_SQLITE_INSERT = (
    "INSERT INTO events (id, workspace_id, type, created_at, size, source, payload, "
    "correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_rows(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Insert event rows (from ``event_row``) with one statement, without announcing them.

    On SQLite one executemany of plain tuples, without per-value processing (values are
    stored exactly as the ``Event`` model stores them: JSON text, naive UTC times); the ORM's
    bulk insert costs about as much again there.
    """
    metrics.count_events(session, [row["source"].get("workspaceSlug") for row in rows])
    if session.get_bind().dialect.name != "sqlite":
        # on the connection: a Core executemany, without the ORM's flush and bulk machinery
        session.connection().execute(insert(Event), rows)
        return
    session.connection().exec_driver_sql(
        _SQLITE_INSERT,
        [
            (
                row["id"],
                row["workspace_id"],
                row["type"],
                row["created_at"].astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
                row["size"],
                json.dumps(row["source"]),
                json.dumps(row["payload"]),
                row["correlation_id"],
            )
            for row in rows
        ],
    )


def check_payload_size(size: int) -> None:
    """Reject a custom event payload over ``MAX_PAYLOAD_BYTES`` (HTTP 413)."""
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLarge(
            f"event payload is {size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
            details={"field": "payload", "size": size, "limit": MAX_PAYLOAD_BYTES},
        )


def automation_executed_row(
    workspace_id: str,
    workspace_slug: str | None,
    execution_id: str,
    trigger: Mapping[str, Any] | None,
    *,
    status: str,
    duration: float,
    outputs: Any,
    correlation_id: str | None,
    user_id: str | None,
) -> dict[str, Any] | None:
    """The ``runtime.automations.executed`` row of an ending, if an automation started it."""
    slug = (trigger or {}).get("automation")
    if not slug:
        return None
    return event_row(
        workspace_id,
        workspace_slug,
        "runtime.automations.executed",
        {
            "slug": slug,
            "executionId": execution_id,
            "trigger": (trigger or {}).get("type"),
            "status": status,
            "duration": duration,
            "output": outputs,
        },
        correlation_id=correlation_id,
        execution_id=execution_id,
        user_id=user_id,
        extra_source={"automationSlug": slug},
    )


# --- reading: views, search, the live feed ------------------------------------------------------

TYPE_FILTER_RE = re.compile(r"^[A-Za-z0-9._-]{0,128}\*?$")
FIELD_PATH_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$")
MAX_SEARCH_LIMIT = 1000
_FTS_TOKEN_RE = re.compile(r"\w+", re.UNICODE)


def event_view(event: Event) -> dict[str, Any]:
    """The envelope (docs/events.md) of one stored event."""
    return {
        "id": event.id,
        "seq": event.seq,
        "type": event.type,
        "created_at": format_timestamp(event.created_at),
        "size": event.size,
        "source": event.source or {},
        "payload": event.payload,
    }


@dataclass(frozen=True)
class EventFilter:
    """A validated search or stream filter (see ``parse_filter``)."""

    types: tuple[str, ...] = ()
    text: str | None = None
    after: datetime | None = None
    before: datetime | None = None
    correlation_id: str | None = None
    source: tuple[tuple[str, str], ...] = ()
    payload: tuple[tuple[str, str], ...] = ()


def _parse_date(name: str, raw: str | None) -> datetime | None:
    if raw is None or raw == "":
        return None
    try:
        return parse_timestamp(raw)
    except ValueError:
        raise Invalid(
            f"{name} must be an ISO 8601 date or time, got {raw!r}",
            details={"parameter": name, "value": raw},
        ) from None


def parse_filter(
    *,
    types: str | None = None,
    text: str | None = None,
    after_date: str | None = None,
    before_date: str | None = None,
    correlation_id: str | None = None,
    matches: Mapping[str, str] | None = None,
) -> EventFilter:
    """Validate raw query parameters; a malformed one is a 422 that names the parameter.

    ``matches`` holds the ``source.<field>`` and ``payload.<path>`` parameters as given.
    """
    type_list: list[str] = []
    if types:
        for item in (t.strip() for t in types.split(",")):
            if not item or not TYPE_FILTER_RE.match(item) or item == "":
                raise Invalid(
                    f"types: {item!r} is not an event type or a prefix ending in '*'",
                    details={"parameter": "types", "value": item},
                )
            type_list.append(item)
    if text is not None and len(text) > 500:
        raise Invalid("text is longer than 500 characters", details={"parameter": "text"})
    source: list[tuple[str, str]] = []
    payload: list[tuple[str, str]] = []
    for key, value in (matches or {}).items():
        prefix, _, path = key.partition(".")
        if prefix not in ("source", "payload") or not FIELD_PATH_RE.match(path):
            raise Invalid(
                f"{key}: use source.<field> or payload.<path> with A-Z a-z 0-9 _ - and dots",
                details={"parameter": key},
            )
        (source if prefix == "source" else payload).append((path, value))
    after = _parse_date("afterDate", after_date)
    before = _parse_date("beforeDate", before_date)
    if after and before and after > before:
        raise Invalid("afterDate is later than beforeDate", details={"parameter": "afterDate"})
    if correlation_id is not None and len(correlation_id) > 64:
        raise Invalid("correlationId is too long", details={"parameter": "correlationId"})
    return EventFilter(
        types=tuple(type_list),
        text=text or None,
        after=after,
        before=before,
        correlation_id=correlation_id or None,
        source=tuple(source),
        payload=tuple(payload),
    )


def _json_text(column: Any, path: str) -> Any:
    parts = tuple(path.split("."))
    element = column[parts] if len(parts) > 1 else column[parts[0]]
    return element.as_string()


def _visible_depths(criteria: EventFilter) -> ColumnElement[bool]:
    """Events of nested app instances (depth >= 2) are hidden from the workspace's feed.

    They stay visible one level up: filtering on ``source.appInstanceFullSlug`` of an
    instance of depth ``d`` shows events down to depth ``d + 1``.
    """
    shown = 1
    for path, value in criteria.source:
        if path == "appInstanceFullSlug":
            shown = value.count(".") + 2
    depth = cast(_json_text(Event.source, "appInstanceDepth"), String)
    return or_(depth.is_(None), depth.in_([str(d) for d in range(shown + 1)]))


def _filtered(query: Select[Any], session: Session, criteria: EventFilter) -> Select[Any]:
    if criteria.types:
        clauses: list[ColumnElement[bool]] = []
        for item in criteria.types:
            if item.endswith("*"):
                prefix = item[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                clauses.append(Event.type.like(prefix + "%", escape="\\"))
            else:
                clauses.append(Event.type == item)
        query = query.where(or_(*clauses))
    if criteria.after:
        query = query.where(Event.created_at >= criteria.after)
    if criteria.before:
        query = query.where(Event.created_at <= criteria.before)
    if criteria.correlation_id:
        query = query.where(Event.correlation_id == criteria.correlation_id)
    query = query.where(_visible_depths(criteria))
    for path, value in criteria.source:
        query = query.where(cast(_json_text(Event.source, path), String) == value)
    for path, value in criteria.payload:
        query = query.where(cast(_json_text(Event.payload, path), String) == value)
    if criteria.text:
        tokens = _FTS_TOKEN_RE.findall(criteria.text)
        if not tokens:
            return query.where(false())
        if session.get_bind().dialect.name == "sqlite":
            match = " ".join('"' + token.replace('"', "") + '"' for token in tokens)
            query = query.where(
                Event.seq.in_(text("SELECT rowid FROM events_fts WHERE events_fts MATCH :fts"))
            ).params(fts=match)
        else:
            query = query.where(
                text(
                    "to_tsvector('simple'::regconfig, translate(events.type || ' ' || "
                    "coalesce(events.payload::text, ''), '._-/', '    ')) @@ "
                    "plainto_tsquery('simple'::regconfig, :fts)"
                )
            ).params(fts=" ".join(tokens))
    return query


def search(
    session: Session,
    workspace: Workspace,
    criteria: EventFilter,
    *,
    limit: int = 50,
    before_seq: int | None = None,
) -> list[Event]:
    """Events of a workspace matching ``criteria``, newest first; page with ``before_seq``."""
    query = select(Event).where(Event.workspace_id == workspace.id)
    if before_seq is not None:
        query = query.where(Event.seq < before_seq)
    query = _filtered(query, session, criteria)
    return list(session.scalars(query.order_by(Event.seq.desc()).limit(limit)))


def newest_by_payload(
    session: Session,
    workspace: Workspace,
    criteria: EventFilter,
    path: str,
    values: Collection[str],
) -> dict[str, Event]:
    """For each of ``values``, the newest event of a workspace matching ``criteria`` whose
    payload has that value at ``path`` (as ``search`` with ``payload.<path>`` and
    ``limit=1`` finds it), in one query; a value no event has is left out."""
    if not values:
        return {}
    key = cast(_json_text(Event.payload, path), String)
    newest = _filtered(
        select(func.max(Event.seq)).where(Event.workspace_id == workspace.id, key.in_(values)),
        session,
        criteria,
    ).group_by(key)
    found = session.execute(select(key, Event).where(Event.seq.in_(newest)))
    return {value: event for value, event in found}


def read_after(
    session: Session,
    workspace_id: str,
    criteria: EventFilter,
    after_seq: int,
    *,
    limit: int = 500,
    exclude: Iterable[int] = (),
) -> list[Event]:
    """Events of a workspace after ``after_seq``, oldest first (the live stream's read)."""
    query = select(Event).where(Event.workspace_id == workspace_id, Event.seq > after_seq)
    skip = list(exclude)
    if skip:
        query = query.where(Event.seq.not_in(skip))
    query = _filtered(query, session, criteria)
    return list(session.scalars(query.order_by(Event.seq).limit(limit)))


def last_seq(session: Session, workspace_id: str) -> int:
    """The newest event's seq in a workspace (0 when it has none)."""
    return int(
        session.scalar(select(func.max(Event.seq)).where(Event.workspace_id == workspace_id)) or 0
    )


def cloudevent(view: Mapping[str, Any]) -> dict[str, Any]:
    """An event envelope as a CloudEvents 1.0 JSON object (correlation id as an extension)."""
    source = view.get("source") or {}
    result: dict[str, Any] = {
        "specversion": "1.0",
        "id": view["id"],
        "source": f"/workspaces/{source.get('workspaceSlug') or source.get('workspaceId') or '-'}",
        "type": view["type"],
        "time": view["created_at"],
        "datacontenttype": "application/json",
        "data": view.get("payload"),
        "sequence": str(view["seq"]),
    }
    if source.get("correlationId"):
        result["correlationid"] = source["correlationId"]
    if source.get("executionId"):
        result["subject"] = f"executions/{source['executionId']}"
    return result


def recent_times(
    session: Session, workspace: Workspace, criteria: EventFilter, *, limit: int = 2_000
) -> list[datetime]:
    """When the newest ``limit`` matching events happened, newest first (for a histogram)."""
    query = _filtered(
        select(Event.created_at).where(Event.workspace_id == workspace.id), session, criteria
    )
    # One exact type: walk the (workspace, type, created_at) index instead of sorting by seq.
    single = len(criteria.types) == 1 and not criteria.types[0].endswith("*")
    order = Event.created_at.desc() if single else Event.seq.desc()
    return list(session.scalars(query.order_by(order).limit(limit)))
