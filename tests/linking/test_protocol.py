"""Exchange bodies from a remote server are validated before anything is acted on."""

from __future__ import annotations

import contextlib
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowlink.errors import Invalid
from flowlink.linking import protocol
from flowlink.linking.protocol import (
    FEATURES,
    HELD_ANSWER,
    LONG_POLL,
    envelope,
    features_of,
    max_poll,
    parse_envelope,
)

NOW = "2026-11-21T10:00:00Z"
START = {
    "id": "m1",
    "type": "execution.start",
    "created_at": NOW,
    "origin_execution_id": "e-1",
    "flow": "hello",
    "script": "def handler(system, this, inputs):\n    return this.success('ok')\n",
    "inputs": {"a": 1},
    "correlation_id": "c-1",
}
UPDATE = {
    "id": "m2",
    "type": "execution.update",
    "created_at": NOW,
    "origin_execution_id": "e-1",
    "revision": 1,
    "status": "success",
    "outputs": {"x": 1},
    "logs": [{"seq": 1, "line": "hello"}],
    "started_at": NOW,
    "ended_at": NOW,
}
CANCEL = {"id": "m3", "type": "execution.cancel", "created_at": NOW, "origin_execution_id": "e-1"}
ACK = {"id": "m4", "type": "ack", "created_at": NOW, "ids": ["m0"]}


def test_every_message_type_round_trips() -> None:
    body = envelope([START, UPDATE, CANCEL, ACK], poll=20)
    parsed = parse_envelope(body)
    assert [message.wire() for message in parsed.messages] == [START, UPDATE, CANCEL, ACK]
    assert parsed.poll == 20


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"messages": "x"}, "messages"),
        ({"messages": [], "extra": 1}, "body"),
        ({"messages": [], "poll": 600}, "poll"),
        ({"messages": [1]}, "messages[0]"),
        ({"messages": [{**START, "type": "execution.explode"}]}, "messages[0].type"),
        ({"messages": [ACK, {**START, "inputs": [1]}]}, "messages[1].inputs"),
        ({"messages": [{**UPDATE, "status": "weird"}]}, "messages[0].status"),
        ({"messages": [{**UPDATE, "logs": [{"seq": -1, "line": "x"}]}]}, "messages[0].logs[0].seq"),
        ({"messages": [{k: v for k, v in START.items() if k != "flow"}]}, "messages[0]"),
        ({"messages": [{**START, "id": "bad id with spaces"}]}, "messages[0].id"),
        ({"messages": [START, START]}, "messages[1].id"),
        ({"messages": [{**CANCEL, "surprise": True}]}, "messages[0]"),
    ],
)
def test_bad_envelopes_name_the_field(body: Any, field: str) -> None:
    with pytest.raises(Invalid) as info:
        parse_envelope(body)
    assert info.value.details["field"] == field, info.value.message
    assert info.value.message.startswith(field)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["messages", "poll", "x"]), json_values, max_size=3))
def test_arbitrary_bodies_only_ever_raise_invalid(body: dict[str, Any]) -> None:
    with contextlib.suppress(Invalid):
        parse_envelope(body)


def judged_by_schema(body: Any) -> Any:
    """What ``parse_envelope`` answers with its shortcut for renewed polls turned off."""
    with mock.patch.object(protocol, "_renewal", lambda _data: None):
        try:
            return parse_envelope(body)
        except Invalid as error:
            return error.details


polls = st.none() | st.booleans() | st.integers(-5, 400) | st.floats() | st.text(max_size=3)


@settings(max_examples=400, deadline=None)
@given(
    st.fixed_dictionaries(
        {"messages": st.just([]) | st.just({}) | st.just("")},
        optional={"poll": polls, "x": st.integers(), "Poll": st.integers()},
    )
)
def test_a_renewed_poll_is_judged_as_the_schema_judges_it(body: dict[str, Any]) -> None:
    # Empty envelopes skip the schema (a thousand sites renew every minute): the same
    # answer for every one of them, the refused ones included (NaN, bools, negatives, null).
    try:
        answer: Any = parse_envelope(body)
    except Invalid as error:
        answer = error.details
    assert answer == judged_by_schema(body)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"type": st.sampled_from(["execution.start", "execution.update", "ack", "x"])},
            optional={"id": st.text(max_size=70), "ids": json_values, "status": json_values},
        ),
        max_size=4,
    )
)
def test_arbitrary_messages_only_ever_raise_invalid(messages: list[dict[str, Any]]) -> None:
    with contextlib.suppress(Invalid):
        parse_envelope({"messages": messages})


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({**START, "inputs": {"a": "\ud800"}}, "messages[0].inputs.a"),
        ({**START, "inputs": {"\udc00": 1}}, "messages[0].inputs.\ufffd"),
        ({**UPDATE, "outputs": {"x": float("nan")}}, "messages[0].outputs.x"),
        ({**UPDATE, "logs": [{"seq": 1, "line": "bad \udfff"}]}, "messages[0].logs.0.line"),
        ({**UPDATE, "message": "\ud800"}, "messages[0].message"),
    ],
)
def test_lone_surrogates_and_nan_in_messages_are_refused(
    message: dict[str, Any], field: str
) -> None:
    with pytest.raises(Invalid) as caught:
        parse_envelope(envelope([ACK, message]))
    assert caught.value.details["field"] == field.replace("[0]", "[1]")
    assert caught.value.details["index"] == 1


def test_non_finite_poll_is_refused() -> None:
    with pytest.raises(Invalid) as caught:
        parse_envelope({"messages": [], "poll": float("nan")})
    assert caught.value.details["field"] == "poll"


def test_a_poll_longer_than_a_minute_is_asked_only_of_an_end_that_holds_it() -> None:
    # An end of this version holds up to 300 s and says so; an earlier end (no feature)
    # refuses more than 60 s, so it is never asked for more.
    assert parse_envelope({"messages": [], "poll": 120}).poll == 120
    assert LONG_POLL in FEATURES
    assert features_of(f"traceparent, {LONG_POLL}, {HELD_ANSWER}, unknown") == FEATURES
    assert max_poll(features_of(",".join(sorted(FEATURES)))) == 300
    assert max_poll(features_of("traceparent")) == max_poll(frozenset()) == 60
