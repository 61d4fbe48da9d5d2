"""The link messages as typed objects: one class per message kind, the same for both ways.

``flowlink.linking.protocol`` validates a received body against the protocol's schema (the
errors name the message index and field), then turns each message into one of these
classes once; the handlers of ``flowlink.linking.exchange`` take them. What this end sends
is built from the same classes and put on the wire with :meth:`Message.wire`.

The wire format does not change: ``wire()`` writes the fields in the order declared here
and only those that were given (a field set to ``None`` is sent as ``null``, a field never
set is left out), which is what earlier versions wrote.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from flowlink.execution_status import ExecutionStatus
from flowlink.store.models import utcnow

__all__ = [
    "AckMessage",
    "CancelMessage",
    "LinkMessage",
    "LogLine",
    "Message",
    "StartMessage",
    "UpdateMessage",
    "from_wire",
]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LogLine(_Wire):
    """A log line of an execution, with its sequence number at the sending end."""

    seq: int
    line: str


class Message(_Wire):
    """What every message has: an id (acked by the other end), its kind and when it was made."""

    id: str
    type: str
    created_at: str

    @classmethod
    def new(cls, **fields: Any) -> Self:
        """A message of this kind with a fresh id and the current time."""
        kind = cls.model_fields["type"].default
        created = utcnow().isoformat().replace("+00:00", "Z")
        return cls(id=uuid.uuid4().hex, type=kind, created_at=created, **fields)

    def wire(self) -> dict[str, Any]:
        """The message as JSON-ready data, exactly the fields that were given."""
        return self.model_dump(exclude_unset=True)


class StartMessage(Message):
    """``execution.start``: run a flow script (or the receiver's own flow) for an origin run."""

    type: Literal["execution.start"] = "execution.start"
    origin_execution_id: str
    origin_workspace: str | None = None
    flow: str
    script: str | None = None
    use_remote_flow: bool = False
    inputs: dict[str, Any]
    correlation_id: str | None = None
    max_runtime: int | float | None = None  # an int stays an int on the wire
    traceparent: str | None = None  # sent only to peers that accept it


class UpdateMessage(Message):
    """``execution.update``: the state of a run started through the link (or of a copy).

    ``revision`` counts the updates of one execution; ``mirror`` marks a read-only copy
    (send-all); ``flow`` ... ``created_at_origin`` come with the first update only.
    """

    type: Literal["execution.update"] = "execution.update"
    origin_execution_id: str
    revision: int
    status: ExecutionStatus
    message: str | None = None
    outputs: dict[str, Any] | None = None
    error_kind: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    logs: list[LogLine] | None = None
    flow: str | None = None
    script: str | None = None
    inputs: dict[str, Any] | None = None
    correlation_id: str | None = None
    created_at_origin: str | None = None
    mirror: bool = False


class CancelMessage(Message):
    """``execution.cancel``: cancel the run started for an origin execution."""

    type: Literal["execution.cancel"] = "execution.cancel"
    origin_execution_id: str
    reason: str | None = None


class AckMessage(Message):
    """``ack``: the ids of messages received and stored; the sender drops them."""

    type: Literal["ack"] = "ack"
    ids: list[str]


LinkMessage = Annotated[
    StartMessage | UpdateMessage | CancelMessage | AckMessage, Field(discriminator="type")
]
_ADAPTER: TypeAdapter[LinkMessage] = TypeAdapter(LinkMessage)


def from_wire(data: dict[str, Any]) -> LinkMessage:
    """The typed message for data that passed the protocol's schema."""
    return _ADAPTER.validate_python(data)
