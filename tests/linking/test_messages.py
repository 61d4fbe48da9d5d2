"""Link messages as typed objects: the same bytes on the wire as before they were typed.

``_dict_message`` is how messages were built before (a dict with a fresh id, the kind and
the time, then the fields in the order given); a peer on that version must read what this
one sends, and this one must send back exactly what it read.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowlink.errors import Invalid
from flowlink.execution_status import ExecutionStatus
from flowlink.linking.messages import (
    AckMessage,
    CancelMessage,
    LogLine,
    Message,
    StartMessage,
    UpdateMessage,
    from_wire,
)
from flowlink.linking.protocol import envelope, parse_envelope

ID, NOW = "0123456789abcdef0123456789abcdef", "2026-11-21T10:00:00.123456Z"
SCRIPT = "def handler(system, this, inputs):\n    return this.success('ok')\n"
TRACE = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"


def _dict_message(kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": ID, "type": kind, "created_at": NOW, **fields}


def _typed(cls: type[Message], **fields: Any) -> dict[str, Any]:
    return cls(id=ID, type=cls.model_fields["type"].default, created_at=NOW, **fields).wire()


def _bytes(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


START_FIELDS: dict[str, Any] = {
    "origin_execution_id": "e-1",
    "origin_workspace": "ws-a",
    "flow": "hello",
    "script": SCRIPT,
    "use_remote_flow": False,
    "inputs": {"a": [1, 2.5, None, "x"]},
    "correlation_id": None,
    "max_runtime": 60,
}
FIRST_UPDATE_FIELDS: dict[str, Any] = {
    "origin_execution_id": "e-1",
    "revision": 1,
    "status": "running",
    "message": None,
    "outputs": {},
    "error_kind": None,
    "started_at": NOW,
    "ended_at": None,
    "logs": [{"seq": 7, "line": "hello"}],
    "flow": "hello",
    "script": SCRIPT,
    "inputs": {"a": 1},
    "correlation_id": "c-1",
    "created_at_origin": NOW,
    "mirror": True,
}
LATER_UPDATE_FIELDS: dict[str, Any] = {
    "origin_execution_id": "e-1",
    "revision": 2,
    "status": "success",
    "message": "done",
    "outputs": {"x": 1.5},
    "error_kind": None,
    "started_at": NOW,
    "ended_at": NOW,
    "logs": [],
}
REFUSAL_FIELDS: dict[str, Any] = {
    "origin_execution_id": "e-1",
    "revision": 1,
    "status": "error",
    "message": "refused",
    "error_kind": "refused",
    "ended_at": NOW,
}

# Every message this end sends, as the code builds it: (class, fields, kind).
SENT = [
    (StartMessage, START_FIELDS, "execution.start"),
    (StartMessage, {**START_FIELDS, "script": None, "use_remote_flow": True}, "execution.start"),
    (StartMessage, {**START_FIELDS, "traceparent": TRACE}, "execution.start"),
    (UpdateMessage, FIRST_UPDATE_FIELDS, "execution.update"),
    (UpdateMessage, LATER_UPDATE_FIELDS, "execution.update"),
    (UpdateMessage, REFUSAL_FIELDS, "execution.update"),
    (CancelMessage, {"origin_execution_id": "e-1", "reason": "stop"}, "execution.cancel"),
    (AckMessage, {"ids": ["m1", "m2"]}, "ack"),
]


@pytest.mark.parametrize(("cls", "fields", "kind"), SENT)
def test_sent_messages_keep_the_wire_format(
    cls: type[Message], fields: dict[str, Any], kind: str
) -> None:
    before = _dict_message(kind, **fields)
    typed_fields = dict(fields)
    if "logs" in fields:
        typed_fields["logs"] = [LogLine(**entry) for entry in fields["logs"]]
    if "status" in fields:
        typed_fields["status"] = ExecutionStatus(fields["status"])
    assert _bytes(_typed(cls, **typed_fields)) == _bytes(before)


@pytest.mark.parametrize(("cls", "fields", "kind"), SENT)
def test_received_messages_round_trip_to_the_same_bytes(
    cls: type[Message], fields: dict[str, Any], kind: str
) -> None:
    before = _dict_message(kind, **fields)
    (parsed,) = parse_envelope(envelope([before])).messages
    assert type(parsed) is cls
    assert _bytes(parsed.wire()) == _bytes(before)


def test_fields_become_typed_values() -> None:
    update = from_wire(_dict_message("execution.update", **FIRST_UPDATE_FIELDS))
    assert isinstance(update, UpdateMessage)
    assert update.status is ExecutionStatus.RUNNING
    assert update.logs == [LogLine(seq=7, line="hello")]
    assert update.mirror is True
    start = from_wire(_dict_message("execution.start", **START_FIELDS))
    assert isinstance(start, StartMessage)
    assert (start.max_runtime, type(start.max_runtime)) == (60, int)  # stays 60, not 60.0
    # Fields a peer leaves out read as their defaults and are left out again on the way back.
    minimal = _dict_message("execution.cancel", origin_execution_id="e-1")
    cancel = from_wire(minimal)
    assert isinstance(cancel, CancelMessage) and cancel.reason is None
    assert cancel.wire() == minimal


def test_new_messages_get_an_id_and_a_time() -> None:
    one, two = AckMessage.new(ids=[]), AckMessage.new(ids=[])
    assert one.id != two.id and len(one.id) == 32
    assert one.type == "ack" and one.created_at.endswith("Z")
    assert list(one.wire()) == ["id", "type", "created_at", "ids"]


def test_a_message_the_types_refuse_names_the_field() -> None:
    # The schema is checked first; the types must agree with it, and say where if not.
    with pytest.raises(Invalid) as caught:
        parse_envelope({"messages": [_dict_message("ack", ids=["ok", 5])]})
    assert caught.value.details["field"].startswith("messages[0].ids")


def test_messages_are_read_only() -> None:
    ack = AckMessage.new(ids=["m1"])
    with pytest.raises(ValueError, match="frozen"):
        ack.ids = []  # type: ignore[misc]
