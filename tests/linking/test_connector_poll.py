"""The poller renews its long poll a little after an answer that carried messages; the sender
sends the acks of a held answer by themselves when nothing else takes them."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from flowlink.linking import connector as connector_module
from flowlink.linking.connector import BUSY, DONE, RENEW_AFTER_NEWS, Connector
from flowlink.linking.protocol import HELD_ANSWER
from flowlink.store import notify


class _Stop(Exception):
    pass


def _poller(results: list[str], calls: list[tuple[str, Any]]) -> Connector:
    """A connector whose exchanges return ``results`` in turn (no store, no HTTP)."""
    poller = Connector.__new__(Connector)
    poller.settings = types.SimpleNamespace(link_poll=55.0)  # type: ignore[assignment]
    poller.transport = types.SimpleNamespace(peer_features=frozenset())  # type: ignore[assignment]

    async def exchange_safely(*, carry_outbox: bool, poll: float | None) -> str:
        calls.append(("exchange", poll))
        if not results:
            raise _Stop
        return results.pop(0)

    poller._exchange_safely = exchange_safely  # type: ignore[method-assign,assignment]
    return poller


def test_a_renewal_waits_only_after_an_answer_with_messages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, Any]] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        calls.append(("sleep", seconds))
        await real_sleep(0)

    monkeypatch.setattr(connector_module, "asyncio", types.SimpleNamespace(sleep=sleep))
    poller = _poller([DONE, BUSY, DONE], calls)
    with pytest.raises(_Stop):
        asyncio.run(poller._poll_loop())
    assert calls == [
        ("exchange", 0.0),  # the first exchange answers at once
        ("exchange", 55.0),  # a held poll, whose answer carried messages
        ("sleep", RENEW_AFTER_NEWS),  # what they woke goes first
        ("exchange", 55.0),  # still a held poll
        ("exchange", 55.0),  # an empty answer: renewed at once
    ]


def _sender(features: frozenset[str], calls: list[bool], results: list[str]) -> Connector:
    """A connector whose first exchange leaves acks pending (what a held answer carried)."""
    sender = Connector.__new__(Connector)
    sender.store = types.SimpleNamespace(notifier=notify.Notifier())  # type: ignore[assignment]
    sender.config_id, sender.workspace_id = "config", "workspace"
    sender._follows, sender._controlled, sender._acks = False, False, []
    sender.transport = types.SimpleNamespace(peer_features=features)  # type: ignore[assignment]

    async def exchange_safely(
        *, carry_outbox: bool, poll: float | None, skip_if_idle: bool = False
    ) -> str:
        calls.append(skip_if_idle)
        if not results:
            raise _Stop
        sender._acks = ["update-1"] if len(calls) == 1 else []
        return results.pop(0)

    sender._exchange_safely = exchange_safely  # type: ignore[method-assign]
    return sender


@pytest.mark.parametrize("features", [frozenset({HELD_ANSWER}), frozenset()])
def test_acks_of_a_held_answer_go_by_themselves_when_nothing_takes_them(
    features: frozenset[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # To an end that holds answers, the acks of what an answer carried go out after
    # ACK_FLUSH even with nothing else to send (that end keeps those messages from its
    # held poll until then); to an older end they wait for the poller, as before.
    monkeypatch.setattr(connector_module, "ACK_FLUSH", 0.01)
    monkeypatch.setattr(connector_module, "SENDER_FALLBACK_SECONDS", 0.05)
    calls: list[bool] = []
    sender = _sender(features, calls, [DONE, DONE])
    with pytest.raises(_Stop):
        asyncio.run(sender._sender_loop())
    flushed = HELD_ANSWER in features
    assert calls == [True, not flushed, True]
