"""Held long polls cost nothing while nothing changes, and wake when their link has news.

An in-process server answers; the test is the connecting end of many links (it signs its
exchanges by hand with real keys). While every poll is held, the server runs (almost) no
store transactions; a remote run queued for one link answers that link's poll at once and
leaves the others held. On PostgreSQL the run is queued through another connection pool
(another ``Store``, as another server process would), so the wake-up comes by NOTIFY.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event, select

from flowlink import assembly
from flowlink.linking import exchange, keys, signing
from flowlink.linking.protocol import envelope
from flowlink.linking.service import sync_path
from flowlink.store.models import SyncConfig, utcnow
from flowlink.timestamps import format_timestamp, parse_timestamp
from flowlink.workspaces import service as workspaces
from tests.conftest import StartedServer, fire_timers_early, statements
from tests.linking.conftest import KeyMaker, add_link_end, one_link, public_pem_of

LINKS = 20
POLL = 30.0
ECHO = "def handler(system, this, inputs):\n    return this.success('echo')\n"


def test_held_polls_cost_nothing_until_their_link_has_news(
    answering: StartedServer, database_url: str, make_key: KeyMaker
) -> None:
    live = answering.live
    files = {"workspace.yml": "name: Ctl\nslug: ctl\n", "flows/echo.py": ECHO}
    assert live.client.post("/api/v1/workspaces/ctl/apply", json={"files": files}).is_success
    own, site = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    for n in range(LINKS):
        add_link_end(live.client, "ctl", f"site-{n}", own, site, direction="controlling")
    site_key = keys.load_private_key(site.read_text())
    transactions = [0]

    def count(*_args: Any) -> None:
        transactions[0] += 1

    event.listen(live.store.engine, "begin", count)

    async def exchange_once(client: httpx.AsyncClient, n: int) -> tuple[int, float, list[Any]]:
        url = live.url + sync_path("ctl", f"site-{n}")
        body = json.dumps(envelope([], POLL)).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        signing.sign_request(site_key, "POST", url, headers, body)
        began = time.monotonic()
        answer = await client.post(url, content=body, headers=headers)
        assert answer.status_code == 200, answer.text
        return n, time.monotonic() - began, answer.json()["messages"]

    answered: list[tuple[int, float, list[Any]]] = []
    stop = threading.Event()

    async def polls() -> None:
        limits = httpx.Limits(max_connections=LINKS + 5)
        async with httpx.AsyncClient(timeout=POLL + 30, limits=limits) as client:
            tasks = [asyncio.create_task(exchange_once(client, n)) for n in range(LINKS)]
            for finished in asyncio.as_completed(tasks):
                answered.append(await finished)
                if len(answered) == 1:
                    break
            while not stop.is_set():
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(polls()), daemon=True)
    thread.start()
    notifier = live.store.notifier
    deadline = time.monotonic() + 30
    while notifier.waiting() < LINKS:
        assert time.monotonic() < deadline, f"only {notifier.waiting()} polls are held"
        time.sleep(0.05)

    # Idle: the held polls run no queries (a timer re-query would be 4 per poll per second).
    time.sleep(0.5)
    before = transactions[0]
    time.sleep(3.0)
    idle = transactions[0] - before
    assert idle <= 8, f"{idle} transactions in 3 s with {LINKS} idle held polls"
    assert not answered

    # News for one link answers that link's poll at once; the others stay held.
    began, at_news = time.monotonic(), transactions[0]
    if live.store.dialect == "postgresql":  # as another server process: heard by NOTIFY
        other = assembly.store(database_url)
        try:
            with other.write() as session:
                workspace = workspaces.get_workspace(session, "ctl")
                exchange.start_remote_execution(
                    session, workspace, "site-7", exchange.RemoteStart(flow="echo")
                )
        finally:
            other.dispose()
    else:  # SQLite has one server process: through its API
        started = live.client.post(
            "/api/v1/workspaces/ctl/executions", json={"flow": "echo", "remote": "site-7"}
        )
        assert started.status_code == 201, started.text
    deadline = time.monotonic() + 10
    while not answered:
        assert time.monotonic() < deadline, "the poll of site-7 was not answered"
        time.sleep(0.01)
    took = time.monotonic() - began
    n, _elapsed, messages = answered[0]
    assert n == 7
    assert [m["type"] for m in messages] == ["execution.start"]
    assert took < 2.0
    time.sleep(0.3)
    assert notifier.waiting() == LINKS - 1
    # Only that link's poll looked at the store (each of 20 looking would be 40 reads).
    woke = transactions[0] - at_news
    assert woke <= 15, f"{woke} transactions after news for one link"
    stop.set()
    thread.join(30)


def test_a_poll_that_runs_out_answers_a_signed_empty_envelope(
    answering: StartedServer, make_key: KeyMaker
) -> None:
    # Its signature is reused while fresh (the same bytes, bound to the same request URL and
    # method); every answer still verifies against this end's key.
    live = answering.live
    own, site_key = one_link(live, make_key, direction="controlling")
    trusted = {keys.fingerprint(k): k for k in keys.load_public_keys(public_pem_of(own))}
    url = live.url + sync_path("ctl", "site")

    def poll(features: str) -> httpx.Response:
        body = json.dumps(envelope([], 0.2)).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        if features:
            headers["Flowlink-Link-Features"] = features
        signing.sign_request(site_key, "POST", url, headers, body)
        answer = httpx.post(url, content=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"messages": []}
        signing.verify_response(
            trusted,
            200,
            answer.headers,
            answer.content,
            request_method="POST",
            request_url=url,
        )
        return answer

    first, second = poll("traceparent"), poll("traceparent")
    assert second.headers["signature"] == first.headers["signature"]
    other = poll("")  # a request announcing other features gets an answer of its own
    assert other.headers["signature"] != first.headers["signature"]
    # A forged or altered answer does not verify: the reuse is of a real signature only.
    with pytest.raises(signing.SignatureRejected):
        signing.verify_response(
            trusted,
            200,
            first.headers,
            b'{"messages":[{"x":1}]}',
            request_method="POST",
            request_url=url,
        )


def test_a_renewed_poll_writes_only_its_nonce_and_the_view_shows_its_time(
    answering: StartedServer, make_key: KeyMaker
) -> None:
    # The link's state is not rewritten for a renewal that changes nothing but the time of
    # the last exchange: the nonce the exchange records tells that time to the view.
    live = answering.live
    _own, site_key = one_link(live, make_key, direction="controlling")
    url = live.url + sync_path("ctl", "site")

    def poll() -> None:
        body = json.dumps(envelope([], 0.1)).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        signing.sign_request(site_key, "POST", url, headers, body)
        assert httpx.post(url, content=body, headers=headers, timeout=30).status_code == 200

    poll()  # the first exchange marks the link connected
    long_ago = format_timestamp(utcnow() - timedelta(minutes=1))
    with live.store.write() as session:
        config = session.scalars(select(SyncConfig).where(SyncConfig.name == "site")).one()
        config.state = {**(config.state or {}), "last_exchange_at": long_ago}
    renewed_at = utcnow()
    with statements(live.store.engine) as seen:
        poll()
    assert not [s for s in seen if s.startswith("UPDATE SYNC_CONFIGS")], seen
    view = live.client.get("/api/v1/workspaces/ctl/sync_config/site").json()
    assert view["state"]["connected"] is True
    shown = parse_timestamp(view["state"]["last_exchange_at"])
    assert shown >= renewed_at - timedelta(seconds=1), (shown, renewed_at)


def test_a_held_poll_signs_its_news_in_the_look_that_found_it(
    answering: StartedServer, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer is signed in the thread hop of the look (one hop, not a second for the
    signature), and it is a valid answer of the server's key, bound to the request."""
    from anyio import to_thread

    from flowlink.linking.endpoint import _signed

    live = answering.live
    own, site_key = one_link(live, make_key, direction="controlling")
    files = {"workspace.yml": "name: C\nslug: ctl\n", "flows/echo.py": ECHO}
    assert live.client.post("/api/v1/workspaces/ctl/apply", json={"files": files}).is_success
    hops: list[str] = []
    real_run_sync = to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__name__", repr(func)))
        return await real_run_sync(func, *args, **kwargs)

    monkeypatch.setattr(to_thread, "run_sync", counted)
    url = live.url + sync_path("ctl", "site")
    body = json.dumps(envelope([], POLL)).encode()
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(site_key, "POST", url, headers, body)
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(httpx.post(url, content=body, headers=headers, timeout=60))
    )
    thread.start()
    deadline = time.monotonic() + 30
    while live.store.notifier.waiting() < 1:
        assert time.monotonic() < deadline, "the poll is not held"
        time.sleep(0.05)
    started = live.client.post(
        "/api/v1/workspaces/ctl/executions", json={"flow": "echo", "remote": "site"}
    )
    assert started.status_code == 201, started.text
    thread.join(30)
    answer = answers[0]
    assert answer.status_code == 200, answer.text
    assert [m["type"] for m in answer.json()["messages"]] == ["execution.start"]
    server_key = keys.load_private_key(own.read_text()).public_key()
    signing.verify_response(
        {keys.fingerprint(server_key): server_key},
        200,
        answer.headers,
        answer.content,
        request_method="POST",
        request_url=url,
    )
    assert _signed.__name__ not in hops  # signed in the look's hop


def test_a_poll_that_runs_out_with_nothing_heard_does_not_look_again(
    answering: StartedServer, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The exchange's transaction looked when the poll began; nothing announced a change
    # since, and the other end's next exchange looks in its own transaction.
    from flowlink.linking import endpoint

    live = answering.live
    _own, site_key = one_link(live, make_key, direction="controlling")
    url = live.url + sync_path("ctl", "site")
    looks: list[str] = []
    look_for_news = endpoint.look_for_news

    def counted(*args: Any) -> exchange.News:
        looks.append(args[1])
        return look_for_news(*args)

    monkeypatch.setattr(endpoint, "look_for_news", counted)
    fire_timers_early(monkeypatch, 0.005)  # the deadline still counts as reached

    def poll(seconds: float) -> float:
        body = json.dumps(envelope([], seconds)).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        signing.sign_request(site_key, "POST", url, headers, body)
        began = time.monotonic()
        answer = httpx.post(url, content=body, headers=headers, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"messages": []}
        return time.monotonic() - began

    poll(0.1)  # the server learns the link's ids: a renewal then looks in its transaction
    time.sleep(1.0)  # what the first exchange announced (the link connected) has been heard
    looks.clear()
    assert poll(0.3) >= 0.3
    assert poll(0.3) >= 0.3
    assert looks == []
