"""Worker registration and heartbeat, readiness, and a killed worker shown as lost."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.conftest import make_settings, start_live_server
from tests.executions.test_worker_processes import start_worker, stop

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]


def until(probe: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def workers(client: httpx.Client) -> dict[int, dict[str, Any]]:
    response = client.get("/api/v1/workers")
    assert response.status_code == 200, response.text
    return {item["pid"]: item for item in response.json()["items"]}


@pytest.mark.slow
def test_workers_register_heartbeat_and_are_lost_when_killed(database_url: str) -> None:
    started = start_live_server(make_settings(database_url), with_worker=False)
    client = started.live.client
    processes: list[subprocess.Popen[bytes]] = []
    try:
        not_ready = client.get("/api/v1/ready")
        assert not_ready.status_code == 503, not_ready.text
        checks = not_ready.json()["checks"]
        assert checks["store"]["ok"] and checks["migrations"]["ok"]
        assert checks["workers"] == {"ok": False, "running": 0}
        assert client.get("/api/v1/health").status_code == 200  # alive all the same

        doomed = start_worker(database_url, FLOWLINK_LEASE_SECONDS="3")
        graceful = start_worker(database_url, FLOWLINK_LEASE_SECONDS="3")
        processes += [doomed, graceful]
        both = until(
            lambda: (w := workers(client)).get(doomed.pid) and w.get(graceful.pid) and w,
            "both workers to register",
        )
        record = both[doomed.pid]
        assert record["status"] == "running"
        assert record["concurrency"] == 16 and record["busy"] == 0
        assert record["started_at"].endswith("Z") and record["last_seen"].endswith("Z")
        first_seen = record["last_seen"]
        until(lambda: workers(client)[doomed.pid]["last_seen"] != first_seen, "a heartbeat", 10)
        ready = client.get("/api/v1/ready")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["workers"]["running"] == 2

        listed = subprocess.run(
            [*FLOWLINK, "workers", "list", "--json"],
            env={
                **os.environ,
                "FLOWLINK_SERVER": started.live.url,
                "FLOWLINK_TOKEN": started.live.token,
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert {w["pid"]: w["status"] for w in json.loads(listed.stdout)} == {
            doomed.pid: "running",
            graceful.pid: "running",
        }

        os.killpg(doomed.pid, signal.SIGKILL)
        doomed.wait()
        killed_at = time.monotonic()
        until(lambda: workers(client)[doomed.pid]["status"] == "lost", "the lost status", 20)
        assert time.monotonic() - killed_at >= 2.0  # three heartbeats (1 s each) missed first
        stop(graceful)
        assert workers(client)[graceful.pid]["status"] == "stopped"
        assert workers(client)[graceful.pid]["stopped_at"].endswith("Z")
        assert client.get("/api/v1/ready").status_code == 503
    finally:
        for process in processes:
            stop(process)
        started.stop()
