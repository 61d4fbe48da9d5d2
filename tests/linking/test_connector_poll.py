"""The poller renews its long poll a little after an answer that carried messages."""

from __future__ import annotations

import asyncio
import types
from typing import Any

import pytest

from flowlink.linking import connector as connector_module
from flowlink.linking.connector import BUSY, DONE, RENEW_AFTER_NEWS, Connector


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
