"""One owner per connecting link across server processes on one PostgreSQL store.

Two real server processes (A1, A2) share the controlling store; B answers on its own store.
Exactly one of A1 and A2 drives each link (it holds the link's advisory lock and only it
talks to B); when the owner is killed with SIGKILL during a stream of remote runs, the
other takes its links over within the refresh time, and every run is started in B once
and ends back in A: none lost, none duplicated.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import text

from flowlink.linking.ownership import LOCK_SPACE
from flowlink.linking.service import sync_path
from flowlink.store.engine import make_engine
from tests.linking.conftest import KeyMaker, add_link_end
from tests.linking.servers import ServerFactory, ServerProcess, start_all

PG_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
LINKS = 3
RUNS = 24
ECHO = "def handler(system, this, inputs):\n    return this.success('echo', got=inputs['n'])\n"
ENV = {
    "FLOWLINK_LINK_POLL": "5",
    "FLOWLINK_LINK_BACKOFF_MAX": "1",
    "FLOWLINK_LINK_REFRESH": "0.5",
    "FLOWLINK_LINK_TIMEOUT": "10",
}


def _lock_holders(database_url: str) -> dict[int, int]:
    """Link advisory locks held in this database: backend pid -> how many."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT pid, count(*) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = :space AND granted AND database ="
                    " (SELECT oid FROM pg_database WHERE datname = current_database())"
                    " GROUP BY pid"
                ),
                {"space": LOCK_SPACE},
            ).all()
    finally:
        engine.dispose()
    return {int(pid): int(count) for pid, count in rows}


def _connections_to(server: ServerProcess, port: int) -> int:
    """Established TCP connections from the server process to ``port``."""
    assert server.process is not None
    try:
        process = psutil.Process(server.process.pid)
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )
    except psutil.NoSuchProcess:
        return 0


def _wait(probe: Any, what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what} (last: {value})"
        time.sleep(0.1)


@PG_ONLY
def test_one_owner_per_link_and_takeover_after_kill(
    server_factory: ServerFactory,
    database_url: str,
    second_database_url: str,
    make_key: KeyMaker,
    tmp_path: Path,
) -> None:
    a1 = server_factory(database_url, "a1", env=ENV, secret_key="shared-a")
    b = server_factory(f"sqlite:///{tmp_path / 'b.db'}", "b", env=ENV)
    start_all(a1, b)
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    a1.create_workspace("ctl", flows={"echo": ECHO})
    b.create_workspace("site")
    for n in range(LINKS):
        add_link_end(b.client, "site", f"from-a-{n}", key_b, key_a)
        remote_url = b.url + sync_path("site", f"from-a-{n}")
        add_link_end(a1.client, "ctl", f"to-b-{n}", key_a, key_b, remote_url=remote_url)

    # A1 owns every link; A2, started on the same store, finds them owned and drives none.
    holders = _wait(
        lambda: (h := _lock_holders(database_url)) and sum(h.values()) == LINKS and h,
        "every link to have an owner",
    )
    assert len(holders) == 1, holders
    owner = a1
    _wait(lambda: _connections_to(owner, b.port) >= 1, "the owner to talk to B")
    other = server_factory(database_url, "a2", env=ENV, secret_key="shared-a", token=a1.token)
    other.start()
    time.sleep(2.0)  # several refreshes of A2
    assert _lock_holders(database_url) == holders
    assert _connections_to(other, b.port) == 0
    assert _connections_to(owner, b.port) >= 1

    # A stream of remote runs through the process that survives; the owner dies midway.
    started: list[str] = []
    errors: list[str] = []

    def stream() -> None:
        for n in range(RUNS):
            response = other.client.post(
                "/api/v1/workspaces/ctl/executions",
                json={"flow": "echo", "remote": f"to-b-{n % LINKS}", "inputs": {"n": n}},
            )
            if response.status_code != 201:
                errors.append(response.text)
            else:
                started.append(response.json()["id"])
            time.sleep(0.15)

    streamer = threading.Thread(target=stream)
    streamer.start()
    _wait(lambda: len(started) >= RUNS // 3, "a third of the runs to be started")
    owner.kill()
    killed_at = time.monotonic()
    _wait(
        lambda: sum(_lock_holders(database_url).values()) == LINKS,
        "the survivor to take every link over",
        timeout=15,
    )
    took_over = time.monotonic() - killed_at
    print(f"links taken over {took_over:.2f} s after the owner's SIGKILL")  # docs/linking.md
    streamer.join(60)
    assert not errors, errors
    assert len(started) == RUNS
    assert took_over < 5.0, f"takeover took {took_over:.1f}s"
    assert _connections_to(other, b.port) >= 1

    for n, execution_id in enumerate(started):
        done = other.wait_for_execution("ctl", execution_id, timeout=60)
        assert done["status"] == "success", (done, other.log_tail(), b.log_tail())
        assert done["output_value"] == {"got": n}
    remote = b.client.get("/api/v1/workspaces/site/executions", params={"limit": 1000}).json()
    origins = Counter(item["trigger"]["originExecutionId"] for item in remote["items"])
    assert set(origins) == set(started)  # none lost
    assert max(origins.values()) == 1  # none duplicated
