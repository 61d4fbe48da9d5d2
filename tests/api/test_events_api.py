"""Events through a real server over HTTP: emit, search, CloudEvents, SSE, webhooks, correlation."""

from __future__ import annotations

import json
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from flowlink.automations import triggers
from flowlink.workspaces.service import get_workspace
from tests.conftest import LiveServer

WS = "evapi"
WORKSPACE_YML = """name: Events API
slug: evapi
automations:
  on-signup:
    flow: greet
    when:
      events: [user.signedup]
  hook:
    flow: echo
    when:
      endpoint: true
  public-hook:
    flow: echo
    public: true
    when:
      endpoint: true
  failing-hook:
    flow: boom
    when:
      endpoint: true
  story-start:
    flow: story_emit
    when:
      endpoint: true
  story-next:
    flow: story_step
    when:
      events: [story.next]
  looper:
    flow: loop
    when:
      events: [loop.again]
"""
FLOWS = {
    "greet": "def handler(system, this, inputs):\n"
    "    return this.success('hi', user=inputs['payload']['user'])\n",
    "echo": "def handler(system, this, inputs):\n    return this.success('echo', got=inputs)\n",
    "boom": "def handler(system, this, inputs):\n    raise ValueError('boom')\n",
    "story_emit": "def handler(system, this, inputs):\n"
    "    this.emit('story.next', {'from': 'webhook'})\n"
    "    return this.success('emitted')\n",
    "story_step": "def handler(system, this, inputs):\n"
    "    child = this.flow('greet', {'payload': {'user': 'child'}})\n"
    "    return this.success('step', child=child.get('output_value'))\n",
    "loop": "def handler(system, this, inputs):\n"
    "    this.emit('loop.again', {})\n"
    "    return this.success('looped')\n",
}


def apply_ws(server: LiveServer) -> tuple[LiveServer, dict[str, str]]:
    files = {"workspace.yml": WORKSPACE_YML}
    files.update({f"flows/{name}.py": script for name, script in FLOWS.items()})
    response = server.client.post(f"/api/v1/workspaces/{WS}/apply", json={"files": files})
    assert response.status_code == 200, response.text
    keys = response.json()["webhook_keys"]
    assert set(keys) == {"hook", "failing-hook", "story-start"}  # not the public one
    return server, keys


@pytest.fixture
def ws(live_server: LiveServer) -> tuple[LiveServer, dict[str, str]]:
    return apply_ws(live_server)


@pytest.fixture(scope="module")
def refusing_ws(module_live_server: LiveServer) -> tuple[LiveServer, dict[str, str]]:
    """``ws`` once per module and backend, for the cases whose requests are all refused."""
    return apply_ws(module_live_server)


def search(server: LiveServer, **params: Any) -> list[dict[str, Any]]:
    response = server.client.get(f"/api/v1/workspaces/{WS}/events", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def wait_until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def test_emit_one_and_batch_and_search(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = ws
    one = server.client.post(
        f"/api/v1/workspaces/{WS}/events",
        json={"type": "user.signedup", "payload": {"user": "ann"}, "correlationId": "c-ann"},
    )
    assert one.status_code == 201, one.text
    event = one.json()
    assert event["type"] == "user.signedup" and event["seq"] > 0
    assert event["source"]["correlationId"] == "c-ann"
    assert event["source"]["http"]["method"] == "POST"
    assert event["source"]["http"]["path"] == f"/api/v1/workspaces/{WS}/events"
    assert event["source"]["http"]["ip"] == "127.0.0.1"
    batch = server.client.post(
        f"/api/v1/workspaces/{WS}/events",
        json={"events": [{"type": "bulk.item", "payload": {"i": i}} for i in range(50)]},
    )
    assert batch.status_code == 201, batch.text
    assert batch.json()["count"] == 50
    seqs = [item["seq"] for item in batch.json()["items"]]
    assert seqs == sorted(seqs)
    page = search(server, types="bulk.*", limit=20)
    assert [e["payload"]["i"] for e in page] == list(range(49, 29, -1))
    response = server.client.get(
        f"/api/v1/workspaces/{WS}/events",
        params={"types": "bulk.*", "limit": 20, "cursor": page[-1]["seq"]},
    )
    assert [e["payload"]["i"] for e in response.json()["items"]] == list(range(29, 9, -1))
    assert search(server, **{"payload.i": "7"})[0]["payload"] == {"i": 7}
    # The listener ran with the event as inputs and the same correlation id.
    done = wait_until(
        lambda: search(server, types="runtime.automations.executed", correlationId="c-ann")
    )
    assert done[0]["payload"]["slug"] == "on-signup"
    assert done[0]["payload"]["output"] == {"user": "ann"}
    assert done[0]["payload"]["status"] == "success"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"type": "bad type!", "payload": {}}, 422, "type"),
        ({"type": "x" * 129}, 422, "type"),
        ({"type": "big", "payload": {"b": "x" * 100_001}}, 413, "payload"),
        ({"events": [{"type": "ok"}, {"type": "no/slash"}]}, 422, "type"),
        ({"payload": {}}, 422, "type"),
    ],
)
def test_bad_custom_events_are_rejected_and_nothing_is_stored(
    refusing_ws: tuple[LiveServer, dict[str, str]], body: dict[str, Any], status: int, field: str
) -> None:
    server, _ = refusing_ws
    before = search(server, limit=1)[0]["seq"]
    response = server.client.post(f"/api/v1/workspaces/{WS}/events", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["details"]["field"] == field
    assert search(server, limit=1)[0]["seq"] == before


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"types": "bad type"}, "types"),
        ({"afterDate": "not-a-date"}, "afterDate"),
        ({"beforeDate": "2026-99-01"}, "beforeDate"),
        ({"payload.": "x"}, "payload."),
        ({"source.a..b": "x"}, "source.a..b"),
        ({"limit": "0"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"cursor": "abc"}, "cursor"),
    ],
)
def test_malformed_search_filters_are_422_naming_the_parameter(
    refusing_ws: tuple[LiveServer, dict[str, str]], params: dict[str, str], parameter: str
) -> None:
    server, _ = refusing_ws
    response = server.client.get(f"/api/v1/workspaces/{WS}/events", params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    named = error["details"].get("parameter") or error["details"]["errors"][0]["field"]
    assert named == parameter
    assert parameter in error["message"]


def test_full_text_search_over_api(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = ws
    server.client.post(
        f"/api/v1/workspaces/{WS}/events",
        json={"type": "ticket.opened", "payload": {"subject": "Printer on fire"}},
    )
    found = search(server, text="printer fire")
    assert [e["type"] for e in found] == ["ticket.opened"]
    assert search(server, text="ticket", types="ticket.*")[0]["payload"]["subject"]
    assert search(server, text="nonexistentword") == []


def test_cloudevents_batch_parses_with_the_sdk(ws: tuple[LiveServer, dict[str, str]]) -> None:
    try:  # cloudevents >= 2 keeps the 1.x API under cloudevents.v1
        from cloudevents.v1.http import from_dict
    except ImportError:  # pragma: no cover - cloudevents 1.x
        from cloudevents.http import from_dict

    server, _ = ws
    server.client.post(
        f"/api/v1/workspaces/{WS}/events",
        json={"type": "ce.test", "payload": {"a": 1}, "correlationId": "ce-corr"},
    )
    response = server.client.get(
        f"/api/v1/workspaces/{WS}/events",
        params={"types": "ce.test"},
        headers={"Accept": "application/cloudevents-batch+json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/cloudevents-batch+json")
    batch = response.json()
    assert isinstance(batch, list) and len(batch) == 1
    event = from_dict(batch[0])
    assert event["specversion"] == "1.0"
    assert event["type"] == "ce.test"
    assert event["source"] == f"/workspaces/{WS}"
    assert event["correlationid"] == "ce-corr"
    assert event.data == {"a": 1}


# --- SSE ----------------------------------------------------------------------------------------


class SSEReader:
    """Reads a live stream in a thread into a queue of (id, event) pairs."""

    def __init__(self, server: LiveServer, params: dict[str, Any], last_id: int | None = None):
        self.items: queue.Queue[tuple[int, dict[str, Any]]] = queue.Queue()
        self.ready = threading.Event()
        self._stop = False
        headers = {"Authorization": f"Bearer {server.token}"}
        if last_id is not None:
            headers["Last-Event-ID"] = str(last_id)
        self._client = httpx.Client(base_url=server.url, headers=headers, timeout=60)
        self._params = params
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        try:
            self._read()
        except httpx.HTTPError:
            if not self._stop:
                raise

    def _read(self) -> None:
        with self._client.stream(
            "GET", f"/api/v1/workspaces/{WS}/events/stream", params=self._params
        ) as response:
            assert response.status_code == 200
            self.ready.set()
            event_id = 0
            for line in response.iter_lines():
                if self._stop:
                    return
                if line.startswith("id: "):
                    event_id = int(line[4:])
                elif line.startswith("data: "):
                    self.items.put((event_id, json.loads(line[6:])))

    def take(self, count: int, timeout: float = 20.0) -> list[tuple[int, dict[str, Any]]]:
        return [self.items.get(timeout=timeout) for _ in range(count)]

    def close(self) -> None:
        self._stop = True
        self._client.close()


def emit(server: LiveServer, event_type: str, payload: Any = None) -> dict[str, Any]:
    response = server.client.post(
        f"/api/v1/workspaces/{WS}/events", json={"type": event_type, "payload": payload}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_sse_live_filter_and_resume_without_gaps(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = ws
    reader = SSEReader(server, {"types": "live.*"})
    try:
        time.sleep(0.3)
        first = [emit(server, "live.a", {"n": n}) for n in range(3)]
        emit(server, "other.thing", {})  # filtered out
        got = reader.take(3)
        assert [view["payload"]["n"] for _, view in got] == [0, 1, 2]
        assert [event_id for event_id, _ in got] == [e["seq"] for e in first]
    finally:
        reader.close()
    # Disconnected: these are missed, then received on reconnect with Last-Event-ID, once each.
    missed = [emit(server, "live.b", {"n": n}) for n in range(5)]
    resumed = SSEReader(server, {"types": "live.*"}, last_id=got[-1][0])
    try:
        again = resumed.take(5)
        assert [view["seq"] for _, view in again] == [e["seq"] for e in missed]
        later = emit(server, "live.c", {})
        assert resumed.take(1)[0][1]["seq"] == later["seq"]
        assert resumed.items.empty()
    finally:
        resumed.close()


def test_sse_event_committed_late_with_a_lower_seq_is_delivered_once(
    ws: tuple[LiveServer, dict[str, str]],
) -> None:
    server, _ = ws
    if server.store.dialect != "postgresql":
        pytest.skip("SQLite has one writer: seq is commit order")
    reader = SSEReader(server, {"types": "late.*"})
    inserted, release = threading.Event(), threading.Event()

    def late() -> None:  # takes its seq first and commits after a higher one
        with server.store.write() as session:
            workspace = get_workspace(session, WS)
            triggers.emit_many(session, workspace, [("late.a", {"n": 1})])
            inserted.set()
            assert release.wait(30)

    writer = threading.Thread(target=late, daemon=True)
    writer.start()
    try:
        assert inserted.wait(10)
        higher = emit(server, "late.b", {"n": 2})
        ((first_id, first),) = reader.take(1)
        assert first["type"] == "late.b" and first_id == higher["seq"]
        release.set()
        writer.join(10)
        # Woken by the late commit's own notification; its id is the stream position, so
        # a client resuming from it repeats nothing.
        ((late_id, late_view),) = reader.take(1)
        assert late_view["type"] == "late.a" and late_view["seq"] < higher["seq"]
        assert late_id == higher["seq"]
        last = emit(server, "late.c", {"n": 3})
        assert [(i, v["type"]) for i, v in reader.take(1)] == [(last["seq"], "late.c")]
        time.sleep(0.3)
        assert reader.items.empty()
    finally:
        release.set()
        reader.close()


def test_sse_bad_last_event_id_is_422(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = ws
    response = server.client.get(
        f"/api/v1/workspaces/{WS}/events/stream", headers={"Last-Event-ID": "nope"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"]["parameter"] == "Last-Event-ID"
    response = server.client.get(f"/api/v1/workspaces/{WS}/events/stream", params={"types": "a b"})
    assert response.status_code == 422


def test_slow_sse_client_does_not_block_others_and_can_resume(
    ws: tuple[LiveServer, dict[str, str]],
) -> None:
    server, _ = ws
    start = server.client.get(f"/api/v1/workspaces/{WS}/events", params={"limit": 1}).json()
    start_seq = start["items"][0]["seq"]
    # A client that connects and never reads.
    url = urlsplit(server.url)
    slow = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.sendall(
        (
            f"GET /api/v1/workspaces/{WS}/events/stream?types=flood.*&after={start_seq}"
            " HTTP/1.1\r\n"
            f"Host: {url.netloc}\r\nAuthorization: Bearer {server.token}\r\n\r\n"
        ).encode()
    )
    fast = SSEReader(server, {"types": "flood.*"})
    try:
        payload = {"blob": "y" * 2000}
        total = 0
        began = time.monotonic()
        for _ in range(10):  # ~4 MB of events, far more than the slow socket's buffers
            response = server.client.post(
                f"/api/v1/workspaces/{WS}/events",
                json={"events": [{"type": "flood.x", "payload": payload}] * 200},
            )
            assert response.status_code == 201
            total += 200
        fast_items = fast.take(total, timeout=30)
        elapsed = time.monotonic() - began
        assert len({view["seq"] for _, view in fast_items}) == total
        assert elapsed < 30
        # The server still answers promptly.
        health_began = time.monotonic()
        assert server.client.get("/api/v1/health").status_code == 200
        assert time.monotonic() - health_began < 2
    finally:
        fast.close()
        slow.close()
    # The slow client reconnects from its start and gets everything once.
    resumed = SSEReader(server, {"types": "flood.*"}, last_id=start_seq)
    try:
        items = resumed.take(total, timeout=30)
        seqs = [view["seq"] for _, view in items]
        assert len(seqs) == len(set(seqs)) == total
        assert seqs == sorted(seqs)
    finally:
        resumed.close()


# --- webhooks -----------------------------------------------------------------------------------


def test_webhook_with_key_answers_with_output(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, keys = ws
    anonymous = httpx.Client(base_url=server.url, timeout=60)
    try:
        response = anonymous.post(
            f"/api/v1/workspaces/{WS}/webhooks/hook?x=1&key={keys['hook']}",
            json={"hello": "world"},
            headers={"X-Custom": "yes", "Cookie": "secret=1"},
        )
        assert response.status_code == 200, response.text
        got = response.json()["got"]
        assert got["method"] == "POST"
        assert got["path"] == f"/api/v1/workspaces/{WS}/webhooks/hook"
        assert got["query"] == {"x": "1"}
        assert got["body"] == {"hello": "world"}
        assert got["headers"]["x-custom"] == "yes"
        assert "cookie" not in got["headers"] and "x-flowlink-key" not in got["headers"]
        execution_id = response.headers["X-Execution-Id"]
        record = server.client.get(f"/api/v1/workspaces/{WS}/executions/{execution_id}").json()
        assert record["trigger"]["type"] == "endpoint"
        assert record["trigger"]["automation"] == "hook"
        for method in ("GET", "PUT", "PATCH", "DELETE"):
            response = anonymous.request(
                method,
                f"/api/v1/workspaces/{WS}/webhooks/hook",
                headers={"X-Flowlink-Key": keys["hook"], "Content-Type": "text/plain"},
                content=b"plain text" if method != "GET" else b"",
            )
            assert response.status_code == 200, (method, response.text)
            assert response.json()["got"]["method"] == method
            if method != "GET":
                assert response.json()["got"]["body"] == "plain text"
        # async: the id at once
        response = anonymous.post(
            f"/api/v1/workspaces/{WS}/webhooks/hook?async=1",
            headers={"X-Flowlink-Key": keys["hook"]},
        )
        assert response.status_code == 202
        assert server.wait_for(WS, response.json()["id"])["status"] == "success"
        # public: no key needed
        response = anonymous.get(f"/api/v1/workspaces/{WS}/webhooks/public-hook")
        assert response.status_code == 200
        # a failing flow: 502 with its message
        response = anonymous.post(
            f"/api/v1/workspaces/{WS}/webhooks/failing-hook",
            headers={"X-Flowlink-Key": keys["failing-hook"]},
        )
        assert response.status_code == 502
        assert "boom" in response.json()["error"]["message"]
        assert response.json()["error"]["code"] == "execution_failed"
        assert response.headers["X-Execution-Id"]
        triggered = search(server, types="runtime.interactions.triggered", limit=200)
        assert any(e["payload"]["trigger"]["type"] == "endpoint" for e in triggered)
    finally:
        anonymous.close()


@pytest.mark.parametrize("key", [None, "whk_wrong", "KEY_OF_OTHER"])
def test_webhook_with_wrong_key_is_401_and_recorded(
    ws: tuple[LiveServer, dict[str, str]], key: str | None
) -> None:
    server, keys = ws
    if key == "KEY_OF_OTHER":
        key = keys["failing-hook"]
    headers = {"X-Flowlink-Key": key} if key else {}
    before = server.client.get(
        f"/api/v1/workspaces/{WS}/executions", params={"limit": 1000}
    ).json()["items"]
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        response = anonymous.post(f"/api/v1/workspaces/{WS}/webhooks/hook", headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"
    errors = search(server, types="error", **{"source.automationSlug": "hook"})
    assert errors and errors[0]["payload"]["reason"] == ("missing_key" if not key else "wrong_key")
    assert errors[0]["source"]["http"]["method"] == "POST"
    after = server.client.get(f"/api/v1/workspaces/{WS}/executions", params={"limit": 1000}).json()[
        "items"
    ]
    assert len(after) == len(before)  # nothing started


def test_webhook_unknown_automation_is_404_and_key_rotation(
    ws: tuple[LiveServer, dict[str, str]],
) -> None:
    server, keys = ws
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        assert anonymous.get(f"/api/v1/workspaces/{WS}/webhooks/nope").status_code == 404
        # an automation without when.endpoint has no webhook
        assert anonymous.get(f"/api/v1/workspaces/{WS}/webhooks/on-signup").status_code == 404
        rotated = server.client.post(f"/api/v1/workspaces/{WS}/automations/hook/webhook_key")
        assert rotated.status_code == 200
        new_key = rotated.json()["key"]
        old = anonymous.get(
            f"/api/v1/workspaces/{WS}/webhooks/hook?async=1",
            headers={"X-Flowlink-Key": keys["hook"]},
        )
        assert old.status_code == 401
        new = anonymous.get(
            f"/api/v1/workspaces/{WS}/webhooks/hook?async=1", headers={"X-Flowlink-Key": new_key}
        )
        assert new.status_code == 202
        # rotating needs a token
        assert (
            anonymous.post(f"/api/v1/workspaces/{WS}/automations/hook/webhook_key").status_code
            == 401
        )


def test_correlation_shows_the_whole_story(ws: tuple[LiveServer, dict[str, str]]) -> None:
    """webhook -> flow emits story.next -> automation -> child flow: one correlation id."""
    server, keys = ws
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        response = anonymous.post(
            f"/api/v1/workspaces/{WS}/webhooks/story-start",
            headers={"X-Flowlink-Key": keys["story-start"]},
        )
    assert response.status_code == 200, response.text
    execution_id = response.headers["X-Execution-Id"]
    record = server.client.get(f"/api/v1/workspaces/{WS}/executions/{execution_id}").json()
    correlation = record["correlation_id"]

    def story() -> list[dict[str, Any]] | None:
        found = search(server, correlationId=correlation, limit=200)
        executed = [e for e in found if e["type"] == "runtime.automations.executed"]
        return found if len(executed) >= 2 else None

    found = wait_until(story)
    types = [e["type"] for e in reversed(found)]
    assert types.count("runtime.interactions.triggered") == 2
    assert "story.next" in types
    assert types.count("executions.created") == 3  # webhook flow, story step, its child
    assert types.count("executions.ended") == 3
    triggered = [e for e in found if e["type"] == "runtime.interactions.triggered"]
    assert {e["payload"]["trigger"]["type"] for e in triggered} == {"endpoint", "event"}


def test_trigger_loop_stops_at_the_depth_limit(ws: tuple[LiveServer, dict[str, str]]) -> None:
    server, _ = ws
    response = server.client.post(
        f"/api/v1/workspaces/{WS}/events",
        json={"type": "loop.again", "payload": {}, "correlationId": "the-loop"},
    )
    assert response.status_code == 201
    errors = wait_until(lambda: search(server, types="error", correlationId="the-loop"), timeout=60)
    assert errors[0]["payload"]["reason"] == "trigger_depth_limit"
    assert errors[0]["payload"]["limit"] == 20
    started = search(server, types="executions.created", correlationId="the-loop", limit=100)
    assert len(started) == 20
