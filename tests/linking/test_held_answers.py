"""Held answers: a start and its run's end in one exchange, with ends that announce it.

An in-process server with a worker answers as the controlled end of one link; the test is
the controlling, connecting end (it signs its exchanges by hand with real keys). A start
sent by an end that announces ``held-answer`` is answered with its ack and the run's end
together; an end that does not announce it gets the ack at once, as before. What a held
answer carried stays out of the held poll until acked, and is sent again once that while
has passed (an answer that never arrived loses nothing).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from flowlink.linking import endpoint, exchange, keys, signing
from flowlink.linking.messages import AckMessage, StartMessage
from flowlink.linking.protocol import FEATURES_HEADER, HELD_ANSWER, LONG_POLL, envelope
from flowlink.linking.service import sync_path
from flowlink.store import notify
from flowlink.store.models import Execution
from tests.conftest import LiveServer, StartedServer, make_settings, start_live_server
from tests.linking.conftest import KeyMaker, one_link

FAST = "def handler(system, this, inputs):\n    return this.success('done')\n"
SLOW = (
    "import time\n"
    "def handler(system, this, inputs):\n"
    "    time.sleep(1.5)\n"
    "    return this.success('slept')\n"
)


@pytest.fixture
def controlled(database_url: str) -> Iterator[StartedServer]:
    started = start_live_server(make_settings(database_url), with_worker=True)
    yield started
    started.stop()


class Site:
    """The controlling end of the link ``ctl``/``site``, as a test drives it."""

    def __init__(self, live: LiveServer, make_key: KeyMaker) -> None:
        own, self.key = one_link(live, make_key, "runs")
        server_key = keys.load_private_key(own.read_text()).public_key()
        self.trusted = {keys.fingerprint(server_key): server_key}
        self.url = live.url + sync_path("runs", "site")

    def exchange(
        self, messages: list[dict[str, Any]], *, features: str, poll: float | None = None
    ) -> tuple[list[dict[str, Any]], float]:
        """One signed exchange: the answer's messages (its signature checked) and its time."""
        body = json.dumps(envelope(messages, poll)).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        if features:
            headers[FEATURES_HEADER] = features
        signing.sign_request(self.key, "POST", self.url, headers, body)
        began = time.monotonic()
        answer = httpx.post(self.url, content=body, headers=headers, timeout=60)
        took = time.monotonic() - began
        assert answer.status_code == 200, answer.text
        signing.verify_response(
            self.trusted,
            200,
            answer.headers,
            answer.content,
            request_method="POST",
            request_url=self.url,
        )
        return answer.json()["messages"], took


def start(origin: str, script: str = FAST) -> dict[str, Any]:
    """A start message for a run of ``script``."""
    return StartMessage.new(
        origin_execution_id=origin, origin_workspace="ctl", flow="f", script=script, inputs={}
    ).wire()


def kinds(messages: list[dict[str, Any]]) -> list[str]:
    return [message["type"] for message in messages]


def ack_of(message: dict[str, Any]) -> dict[str, Any]:
    return AckMessage.new(ids=[message["id"]]).wire()


def test_a_start_and_its_end_come_back_in_one_exchange_to_an_end_that_announces_it(
    controlled: StartedServer, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(endpoint, "IN_FLIGHT_SECONDS", 1.0)
    # Held until the run ended: a hold longer than 250 ms, for a machine too busy to run it
    # within that.
    monkeypatch.setattr(endpoint, "ANSWER_HOLD", 20.0)
    site = Site(controlled.live, make_key)
    sent = start("origin-1")
    answer, _took = site.exchange([sent], features=f"{HELD_ANSWER},{LONG_POLL}")
    assert kinds(answer) == ["execution.update", "ack"]
    update, ack = answer
    assert ack["ids"] == [sent["id"]]
    assert update["origin_execution_id"] == "origin-1" and update["status"] == "success"
    # Not acked yet: a held poll leaves it out while the answer's ack may still come ...
    held_back, took = site.exchange([], features=HELD_ANSWER, poll=0.5)
    assert held_back == [] and took >= 0.45
    # ... and sends it again once that while is over: an answer lost on the way loses nothing.
    again, took = site.exchange([], features=HELD_ANSWER, poll=5.0)
    assert kinds(again) == ["execution.update"] and again[0]["id"] == update["id"]
    assert took < 4.5  # not the poll's 5 s
    # Acked: gone for good (a poll runs out empty).
    after, _took = site.exchange([ack_of(update)], features=HELD_ANSWER, poll=0.3)
    assert after == []


def test_an_end_that_does_not_announce_it_gets_the_ack_at_once(
    controlled: StartedServer, make_key: KeyMaker
) -> None:
    site = Site(controlled.live, make_key)
    sent = start("origin-2")
    answer, _took = site.exchange([sent], features=LONG_POLL)
    assert kinds(answer) == ["ack"] and answer[0]["ids"] == [sent["id"]]
    # The end comes with the next poll, as it did before (on a busy machine a "running"
    # report may come first, once the start's grace is over: acked, the end follows).
    acks: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while True:
        assert time.monotonic() < deadline, "the run's end never came"
        news, _took = site.exchange(acks, features=LONG_POLL, poll=10.0)
        assert kinds(news) == ["execution.update"], news
        if news[0]["status"] == "success":
            break
        assert news[0]["status"] == "running", news
        acks = [ack_of(news[0])]
    # A redelivered start is acked and runs nothing twice; the update, still unacked, comes
    # along in the answer.
    redelivered, _took = site.exchange([sent], features=HELD_ANSWER)
    assert kinds(redelivered) == ["execution.update", "ack"]
    with controlled.live.store.read() as session:
        assert session.scalar(select(func.count()).select_from(Execution)) == 1


def test_a_run_that_goes_on_is_answered_after_the_hold_with_the_ack_alone(
    controlled: StartedServer, make_key: KeyMaker
) -> None:
    site = Site(controlled.live, make_key)
    sent = start("origin-3", SLOW)
    answer, took = site.exchange([sent], features=HELD_ANSWER)
    assert took >= endpoint.ANSWER_HOLD - 0.05
    # The ack, and the run's "running" report when its start's grace was over by then.
    assert kinds(answer)[-1] == "ack" and answer[-1]["ids"] == [sent["id"]]
    assert all(m["status"] == "running" for m in answer if m["type"] == "execution.update")
    acks = [ack_of(m) for m in answer if m["type"] == "execution.update"]
    # Its end comes in the held poll.
    deadline = time.monotonic() + 20
    ended: list[dict[str, Any]] = []
    while not ended:
        assert time.monotonic() < deadline, "the run's end never came"
        news, _took = site.exchange(acks, features=HELD_ANSWER, poll=5.0)
        acks = [ack_of(m) for m in news]
        ended = [m for m in news if m.get("status") == "success"]
    assert ended[0]["origin_execution_id"] == "origin-3"


class _Fired:
    """A notifier that notes what it is asked to fire."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, str]] = []

    def fire(self, channel: str, payload: str = "") -> None:
        self.fired.append((channel, payload))


def test_a_held_poll_is_woken_after_a_held_answer_only_for_a_look_it_may_have_missed() -> None:
    flights, notifier = endpoint._Flights(), _Fired()
    end = functools.partial(flights.end, "l", notifier)  # type: ignore[arg-type]
    assert not flights.held("l", time.monotonic())  # nothing held: the poll looks
    flights.begin("l")
    assert flights.held("l", time.monotonic() - 60)  # woken before the answer's look began
    end(carried=True)
    assert notifier.fired == []  # the answer's look took it
    flights.begin("l")
    flights.begin("l")
    assert flights.held("l", time.monotonic() - 60)
    end(carried=False)
    assert notifier.fired == []  # another answer is still held
    end(carried=False)
    assert notifier.fired == [(notify.LINK, "l")]  # its last look was not signed
    flights.begin("l")
    flights.looking("l")
    assert flights.held("l", time.monotonic() + 1)  # woken after that look began
    end(carried=True)
    assert notifier.fired == [(notify.LINK, "l")] * 2
    flights.begin("l")
    end(carried=False)  # no look skipped: nothing to wake
    assert notifier.fired == [(notify.LINK, "l")] * 2
    assert not flights.held("l", time.monotonic())
    assert flights._flights == {}  # nothing is kept of a link that holds nothing


def test_messages_in_flight_stay_out_of_the_held_poll_until_acked() -> None:
    flights = endpoint._Flights()
    one, two = {"id": "m1", "type": "x"}, {"id": "m2", "type": "x"}
    news = exchange.News([one, two], True)
    assert flights.unsent("l", news) is news
    flights.sent("l", [one])
    flights.begin("l")  # a held answer meanwhile keeps the link's record
    kept = flights.unsent("l", news)
    assert kept.messages == [two] and kept.follows
    assert kept.again is not None and 0 < kept.again <= endpoint.IN_FLIGHT_SECONDS
    flights.acked("l", ["m1", "unknown"])
    assert flights.unsent("l", news) is news
    flights.end("l", _Fired(), carried=True)  # type: ignore[arg-type]
    assert flights._flights == {}
