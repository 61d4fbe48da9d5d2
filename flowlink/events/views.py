"""Response models of events and webhook keys."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class EventView(View):
    """The envelope of one event (docs/events.md)."""

    id: str
    seq: int
    type: str
    created_at: Timestamp
    size: int
    source: dict[str, Any] = Field(
        description="Where it came from (workspaceSlug, correlationId, http, ...): the stored"
        " record, filterable as source.<field>="
    )
    payload: Any = Field(description="The event's payload (free-form JSON)")


class EventPage(View):
    """A page of events, newest first."""

    items: list[EventView]
    next_cursor: int | None = Field(description="Pass as cursor= for the next page")


class EventRef(View):
    """Where an emitted event was stored."""

    id: str
    seq: int


class EmittedBatch(View):
    """The events a batch emitted, in order."""

    count: int
    correlation_id: str | None
    items: list[EventRef]


class WebhookKeyView(View):
    """A new webhook key (shown only in this answer) and the webhook's address."""

    automation: str
    key: str
    public: bool
    url: str


CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["specversion", "id", "source", "type", "time"],
        "properties": {
            "specversion": {"type": "string"},
            "id": {"type": "string"},
            "source": {"type": "string"},
            "type": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"type": "string"},
            "data": {},
            "sequence": {"type": "string"},
            "correlationid": {"type": "string"},
            "subject": {"type": "string"},
        },
    },
}
"""A CloudEvents 1.0 JSON batch (its attribute names are fixed by that specification)."""
