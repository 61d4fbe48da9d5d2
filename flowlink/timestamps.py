"""The one timestamp format: RFC 3339, UTC, milliseconds, ``Z`` (``2026-12-01T13:45:00.123Z``).

Everything a client, a script, a flow or a linked server reads is formatted by
``format_timestamp``; ``parse_timestamp`` reads it back, and also the older forms
(microseconds, ``+00:00``, a space for the ``T``) that a server of a previous version sends.
Response models declare their times as ``Timestamp``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import PlainSerializer, WithJsonSchema


def format_timestamp(value: datetime) -> str:
    """``value`` as RFC 3339 UTC with milliseconds and a ``Z``; a naive time counts as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def format_optional(value: datetime | None) -> str | None:
    """``format_timestamp`` for a time that may be missing."""
    return format_timestamp(value) if value is not None else None


def parse_timestamp(text: str) -> datetime:
    """An aware UTC datetime from RFC 3339 / ISO 8601 text (``Z`` or an offset; naive = UTC).

    A ``+`` that arrived as a space in a query string is repaired. ``ValueError`` when the
    text is no timestamp.
    """
    raw = text.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    if len(raw) > 19 and raw[-6] == " " and raw[-5:-3].isdigit():  # "…T10:00:00 01:00"
        raw = raw[:-6] + "+" + raw[-5:]
    value = datetime.fromisoformat(raw)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Timestamp = Annotated[
    datetime,
    PlainSerializer(format_timestamp, return_type=str, when_used="json"),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$",
            "examples": ["2026-12-01T13:45:00.123Z"],
        }
    ),
]
"""A datetime in a response model, serialized by ``format_timestamp``."""
