"""Waiting holds no thread: many waiting clients, and the API still answers at once."""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from flowlink.events import live
from tests.conftest import LiveServer, StartedServer, make_settings, start_live_server

WAITING = 100  # more than the server's thread pool (40) and its store connections
FOLLOWING = 20
SEED = "def handler(system, this, inputs):\n    return this.success('done')\n"


@pytest.fixture
def idle_server(database_url: str) -> Iterator[LiveServer]:
    """A real server with no worker: executions stay queued until cancelled."""
    started: StartedServer = start_live_server(make_settings(database_url), with_worker=False)
    response = started.live.client.post(
        "/api/v1/workspaces/wait-test/apply",
        json={"files": {"workspace.yml": "name: Wait\nslug: wait-test\n", "flows/seed.py": SEED}},
    )
    assert response.status_code == 200, response.text
    yield started.live
    started.stop()


def _in_background(coroutine: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = asyncio.run(coroutine)
        except BaseException as error:  # reported by the test
            out["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_waiting_clients_do_not_starve_the_api(idle_server: LiveServer) -> None:
    server = idle_server
    base = "/api/v1/workspaces/wait-test/executions"
    ids = [
        item["id"]
        for item in server.client.post(
            f"{base}/batch", json={"executions": [{"flow": "seed"}] * FOLLOWING}
        ).json()["items"]
    ]
    headers = {"Authorization": f"Bearer {server.token}"}

    async def clients() -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
        limits = httpx.Limits(max_connections=WAITING + FOLLOWING + 10)
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=120, limits=limits
        ) as client:
            began = time.monotonic()
            waits = [client.post(base, json={"flow": "seed", "wait": 90}) for _ in range(WAITING)]
            follows = [client.get(f"{base}/{i}/logs", params={"after": 0, "wait": 90}) for i in ids]
            answers = await asyncio.gather(*waits, *follows)
            return (
                [a.json() for a in answers[:WAITING]],
                [a.json() for a in answers[WAITING:]],
                time.monotonic() - began,
            )

    thread, out = _in_background(clients())
    notifier = server.store.notifier
    deadline = time.monotonic() + 60
    while notifier.waiting() < WAITING + FOLLOWING:
        assert time.monotonic() < deadline, f"only {notifier.waiting()} requests wait"
        assert "error" not in out, out
        time.sleep(0.05)
    assert threading.active_count() < 80  # waiting requests are not threads

    latencies = []
    for _ in range(20):
        began = time.monotonic()
        response = server.client.get("/api/v1/health")
        latencies.append(time.monotonic() - began)
        assert response.status_code == 200
    # Before, 45 waiting clients made health take 17 s; now it is as quick as when idle.
    assert max(latencies) < 2.0, latencies
    assert statistics.median(latencies) < 0.5, latencies
    assert thread.is_alive(), out  # the clients still wait

    # Ending the executions wakes every waiter at once (a notification, not a timer).
    # A waiting start listens from before its execution is created: wait for all of them.
    deadline = time.monotonic() + 60
    while True:
        params = {"status": "queued", "limit": 1000}
        queued = server.client.get(base, params=params).json()["items"]
        if len(queued) == WAITING + FOLLOWING:
            break
        assert time.monotonic() < deadline, f"only {len(queued)} executions queued"
        time.sleep(0.05)
    for item in queued:
        assert server.client.post(f"{base}/{item['id']}/cancel").status_code == 200
    cancelled_at = time.monotonic()
    thread.join(timeout=60)
    assert "error" not in out, out
    waited, followed, elapsed = out["result"]
    # Answered on the cancel, not when their 90 s wait ran out.
    assert time.monotonic() - cancelled_at < 20 and elapsed < 85, elapsed
    assert [w["status"] for w in waited] == ["cancelled"] * WAITING
    assert {f["status"] for f in followed} == {"cancelled"}
    assert notifier.waiting() == 0


STREAMS = 50


def test_many_event_streams_share_one_read_per_event(
    idle_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = idle_server
    serialised = [0]
    item = live._item

    def counted(view: dict[str, Any]) -> Any:
        serialised[0] += 1
        return item(view)

    monkeypatch.setattr(live, "_item", counted)
    headers = {"Authorization": f"Bearer {server.token}"}
    got: dict[int, list[str]] = {n: [] for n in range(STREAMS)}
    opened = threading.Event()
    stop = threading.Event()

    async def stream(client: httpx.AsyncClient, n: int, count: list[int]) -> None:
        path = "/api/v1/workspaces/wait-test/events/stream"
        async with client.stream("GET", path, params={"types": "test.ping"}) as response:
            async for line in response.aiter_lines():
                if line.startswith("retry:"):
                    count[0] += 1
                    if count[0] == STREAMS:
                        opened.set()
                elif line.startswith("data:"):
                    got[n].append(json.loads(line[5:])["payload"]["n"])

    async def streams() -> None:
        limits = httpx.Limits(max_connections=STREAMS + 5)
        timeout = httpx.Timeout(60, read=None)
        async with httpx.AsyncClient(
            base_url=server.url, headers=headers, timeout=timeout, limits=limits
        ) as client:
            count = [0]
            tasks = [asyncio.create_task(stream(client, n, count)) for n in range(STREAMS)]
            while not stop.is_set():
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    thread = threading.Thread(target=lambda: asyncio.run(streams()), daemon=True)
    thread.start()
    assert opened.wait(30), "the streams did not open"
    reads = [0]

    def count(*_args: Any) -> None:
        reads[0] += 1

    event.listen(server.store.engine, "begin", count)
    try:
        for n in range(3):
            before, serialised_before = reads[0], serialised[0]
            emitted = server.client.post(
                "/api/v1/workspaces/wait-test/events",
                json={"type": "test.ping", "payload": {"n": n}},
            )
            assert emitted.status_code == 201, emitted.text
            deadline = time.monotonic() + 10
            while any(len(lines) <= n for lines in got.values()):
                assert time.monotonic() < deadline, {k: v for k, v in got.items() if len(v) <= n}
                time.sleep(0.01)
            # The emit itself (authentication, the write) and a few shared reads; one read
            # per stream would be 50.
            assert reads[0] - before <= 10, reads[0] - before
            # The event is serialised once per shared read, not once per stream.
            assert 1 <= serialised[0] - serialised_before <= 10, serialised[0] - serialised_before
    finally:
        event.remove(server.store.engine, "begin", count)
        stop.set()
        thread.join(30)
    assert all(lines == [0, 1, 2] for lines in got.values()), got
