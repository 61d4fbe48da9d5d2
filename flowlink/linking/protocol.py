"""The messages two linked workspaces exchange, and their validation.

An exchange is one HTTP request and its response; both bodies are an *envelope*:

```json
{"messages": [{"id": "...", "type": "execution.start", "created_at": "...", ...}],
 "poll": 25.0}
```

``poll`` (requests only) asks the answering side to hold the response up to that many seconds
until it has something to send (the long poll of the immediate mode): at most 60, or 300 to
an end that announced the ``long-poll`` feature. Message types:

- ``execution.start``: start a flow script for an origin execution (script included, or
  ``use_remote_flow`` to run the receiver's own flow of that name);
- ``execution.update``: the state of an execution started through the link (status, outputs,
  message, timestamps, new log lines with their sequence numbers); ``revision`` counts the
  updates of one execution, so a late duplicate never undoes a newer state; ``mirror: true``
  marks a read-only copy sent because of ``send_all_executions``;
- ``execution.cancel``: cancel the execution started for an origin execution;
- ``ack``: the ids of messages received and stored; the sender may drop them from its outbox.

Everything a remote server sends is validated here before anything is acted on; an invalid
envelope is refused as a whole, naming the message index and the field. Each valid message
is then turned into its typed object (``flowlink.linking.messages``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from flowlink.errors import Invalid
from flowlink.execution_status import ExecutionStatus
from flowlink.jsonsafe import find_problem
from flowlink.linking.messages import LinkMessage, from_wire

MAX_MESSAGES = 1000
# The longest poll a request may ask for. An end of an earlier version refuses more than
# MAX_POLL_SECONDS, so a longer one is asked only of a peer that announced LONG_POLL.
MAX_POLL_SECONDS = 60.0
MAX_LONG_POLL_SECONDS = 300.0
MESSAGE_TYPES = ("execution.start", "execution.update", "execution.cancel", "ack")

_ID = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9._:-]+$"}
_TIME = {"type": ["string", "null"], "maxLength": 40}
_BASE = {
    "id": _ID,
    "type": {"enum": list(MESSAGE_TYPES)},
    "created_at": {"type": "string", "maxLength": 40},
}
_SCHEMAS: dict[str, dict[str, Any]] = {
    "execution.start": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "created_at", "origin_execution_id", "flow", "inputs"],
        "properties": {
            **_BASE,
            "origin_execution_id": _ID,
            "origin_workspace": {"type": "string", "maxLength": 63},
            "flow": {"type": "string", "minLength": 1, "maxLength": 128},
            "script": {"type": ["string", "null"], "maxLength": 1_000_000},
            "use_remote_flow": {"type": "boolean"},
            "inputs": {"type": "object"},
            "correlation_id": {"type": ["string", "null"], "maxLength": 64},
            "max_runtime": {"type": ["number", "null"], "exclusiveMinimum": 0, "maximum": 604800},
            # W3C trace context; sent only to peers that accept it (see observability.tracing)
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            },
        },
    },
    "execution.update": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "created_at", "origin_execution_id", "revision", "status"],
        "properties": {
            **_BASE,
            "origin_execution_id": _ID,
            "revision": {"type": "integer", "minimum": 1},
            "status": {"enum": [str(status) for status in ExecutionStatus]},
            "correlation_id": {"type": ["string", "null"], "maxLength": 64},
            "message": {"type": ["string", "null"], "maxLength": 100_000},
            "outputs": {"type": "object"},
            "error_kind": {"type": ["string", "null"], "maxLength": 32},
            "flow": {"type": "string", "maxLength": 128},
            "script": {"type": ["string", "null"], "maxLength": 1_000_000},
            "inputs": {"type": "object"},
            "created_at_origin": _TIME,
            "started_at": _TIME,
            "ended_at": _TIME,
            "mirror": {"type": "boolean"},
            "logs": {
                "type": "array",
                "maxItems": 10_000,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["seq", "line"],
                    "properties": {
                        "seq": {"type": "integer", "minimum": 0},
                        "line": {"type": "string", "maxLength": 65_536},
                    },
                },
            },
        },
    },
    "execution.cancel": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "created_at", "origin_execution_id"],
        "properties": {
            **_BASE,
            "origin_execution_id": _ID,
            "reason": {"type": ["string", "null"], "maxLength": 1000},
        },
    },
    "ack": {
        "type": "object",
        "additionalProperties": False,
        "required": ["id", "type", "created_at", "ids"],
        "properties": {
            **_BASE,
            "ids": {"type": "array", "maxItems": 10 * MAX_MESSAGES, "items": _ID},
        },
    },
}
_ENVELOPE = Draft202012Validator(
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["messages"],
        "properties": {
            "messages": {"type": "array", "maxItems": MAX_MESSAGES},
            "poll": {"type": "number", "minimum": 0, "maximum": MAX_LONG_POLL_SECONDS},
        },
    }
)
_VALIDATORS = {name: Draft202012Validator(schema) for name, schema in _SCHEMAS.items()}


@dataclass(frozen=True)
class Envelope:
    """A validated exchange body, its messages typed."""

    messages: list[LinkMessage]
    poll: float | None = None


def _path(prefix: str, error_path: Any) -> str:
    out = prefix
    for part in error_path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_envelope(data: Any) -> Envelope:
    """Validate an exchange body from the other side; ``Invalid`` names index and field."""
    renewal = _renewal(data)
    if renewal is not None:
        return renewal
    errors = sorted(_ENVELOPE.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        error = errors[0]
        field = _path("", error.absolute_path).lstrip(".") or "body"
        raise Invalid(f"{field}: {error.message}", details={"field": field})
    problem = find_problem(data.get("poll"), "poll")
    if problem is not None:
        raise Invalid(f"{problem[0]}: {problem[1]}", details={"field": problem[0]})
    messages: list[LinkMessage] = []
    seen: set[str] = set()
    for index, message in enumerate(data["messages"]):
        prefix = f"messages[{index}]"
        if not isinstance(message, dict):
            raise Invalid(f"{prefix}: a message must be an object", details={"field": prefix})
        kind = message.get("type")
        validator = _VALIDATORS.get(kind) if isinstance(kind, str) else None
        if validator is None:
            raise Invalid(
                f"{prefix}.type: unknown message type {kind!r}; known: {', '.join(MESSAGE_TYPES)}",
                details={"field": f"{prefix}.type", "index": index},
            )
        problems = sorted(validator.iter_errors(message), key=lambda e: list(e.absolute_path))
        if problems:
            problem = problems[0]
            field = _path(prefix, problem.absolute_path)
            raise Invalid(f"{field}: {problem.message}", details={"field": field, "index": index})
        # Lone surrogates and NaN/Infinity pass the schema but cannot be stored.
        problem = find_problem(message, prefix)
        if problem is not None:
            raise Invalid(
                f"{problem[0]}: {problem[1]}", details={"field": problem[0], "index": index}
            )
        if message["id"] in seen:
            raise Invalid(
                f"{prefix}.id: message id {message['id']!r} appears twice",
                details={"field": f"{prefix}.id", "index": index},
            )
        seen.add(message["id"])
        try:
            messages.append(from_wire(message))
        except ValidationError as error:  # the schema above should have caught it
            first = error.errors()[0]
            field = _path(prefix, first["loc"][1:])  # loc starts with the message kind
            raise Invalid(
                f"{field}: {first['msg']}", details={"field": field, "index": index}
            ) from None
    return Envelope(messages=messages, poll=data.get("poll"))


def _renewal(data: Any) -> Envelope | None:
    """The envelope of a renewed poll (no messages, a valid ``poll`` or none), checked
    without the schema: a thousand sites send it every minute. None for anything else,
    which the schema then judges."""
    if type(data) is not dict or data.get("messages") != [] or not data.keys() <= _RENEWAL_KEYS:
        return None
    poll = data.get("poll")
    if poll is None:
        return Envelope(messages=[]) if "poll" not in data else None
    if type(poll) not in (int, float) or not 0 <= poll <= MAX_LONG_POLL_SECONDS:
        return None  # NaN compares false: refused by the schema's path
    return Envelope(messages=[], poll=poll)


_RENEWAL_KEYS = frozenset({"messages", "poll"})


def envelope(messages: list[dict[str, Any]], poll: float | None = None) -> dict[str, Any]:
    """An exchange body to send."""
    body: dict[str, Any] = {"messages": messages}
    if poll is not None:
        body["poll"] = poll
    return body


# Optional fields a peer may not know: sent only when it says it accepts them (old peers
# validate messages strictly and would refuse an unknown field).
FEATURES_HEADER = "Flowlink-Link-Features"
OPTIONAL_FIELDS = {"traceparent": "traceparent"}  # field name -> feature that allows it
# An answering end that announces this holds a poll up to MAX_LONG_POLL_SECONDS.
LONG_POLL = "long-poll"
# A connecting end that announces this takes the answer to an exchange that started runs
# once one of the answering end's messages is ready (a short run's end) or after a short
# hold, and sends the acks of what that answer carried by itself if no exchange takes them
# soon; the answering end then keeps those messages out of its held poll until they are
# acked or a while has passed. An old connecting end gets the start's ack at once.
HELD_ANSWER = "held-answer"
FEATURES = frozenset({*OPTIONAL_FIELDS.values(), LONG_POLL, HELD_ANSWER})


def max_poll(accepted: frozenset[str]) -> float:
    """The longest poll a peer with these features accepts."""
    return MAX_LONG_POLL_SECONDS if LONG_POLL in accepted else MAX_POLL_SECONDS


def features_of(header: str | None) -> frozenset[str]:
    """The features a peer announced in ``Flowlink-Link-Features`` (unknown ones ignored)."""
    if not header:
        return frozenset()
    return frozenset(part.strip() for part in header.split(",")) & FEATURES


def for_peer(messages: list[dict[str, Any]], accepted: frozenset[str]) -> list[dict[str, Any]]:
    """The messages without the optional fields the peer did not say it accepts."""
    dropped = [field for field, feature in OPTIONAL_FIELDS.items() if feature not in accepted]
    if not dropped:
        return messages
    return [
        {k: v for k, v in message.items() if k not in dropped}
        if any(field in message for field in dropped)
        else message
        for message in messages
    ]
