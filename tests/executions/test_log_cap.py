"""The per-execution log cap, with real runners: over the limit, lines are counted, not stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from flowlink.executions.calls import LogCap
from flowlink.store.models import ExecutionLog
from tests.conftest import LiveServer, make_settings, start_live_server

FLOOD = """import os, sys

def handler(system, this, inputs):
    for n in range(inputs["prints"]):
        print(f"line {n}")
    for n in range(inputs["logs"]):
        this.log("logged", n)
    os.write(1, b"raw\\n" * inputs["raw"])
    if inputs.get("fail"):
        raise RuntimeError("boom")
    return this.success("flooded")
"""


@pytest.fixture
def capped(database_url: str) -> Iterator[LiveServer]:
    """A server whose executions may store 1,000 log lines or 100,000 bytes."""
    settings = make_settings(database_url, log_max_lines=1000, log_max_bytes=100_000)
    started = start_live_server(settings)
    files = {"workspace.yml": "name: Logs\nslug: logs\n", "flows/flood.py": FLOOD}
    assert started.live.client.post("/api/v1/workspaces/logs/apply", json={"files": files})
    yield started.live
    started.stop()


def run(server: LiveServer, **inputs: object) -> tuple[dict[str, object], list[str]]:
    values = {"prints": 0, "logs": 0, "raw": 0, **inputs}
    record = server.client.post(
        "/api/v1/workspaces/logs/executions",
        json={"flow": "flood", "inputs": values, "wait": 120},
    ).json()
    lines = server.client.get(
        f"/api/v1/workspaces/logs/executions/{record['id']}/logs", params={"limit": 10000}
    ).json()["items"]
    with server.store.read() as session:
        stored = session.scalar(
            select(func.count()).where(ExecutionLog.execution_id == record["id"])
        )
    assert stored == len(lines)
    return record, [line["line"] for line in lines]


def test_lines_over_the_cap_are_dropped_and_counted(capped: LiveServer) -> None:
    record, lines = run(capped, prints=150_000, logs=500, raw=1000)
    assert record["status"] == "success", record
    assert len(lines) == 1002
    assert lines[:3] == ["line 0", "line 1", "line 2"]
    assert lines[999] == "line 999"
    assert lines[1000].startswith("[flowlink] log limit reached (1000 lines or 100000 bytes")
    dropped = 150_000 - 1000 + 500 + 1000
    assert lines[-1].startswith(f"[flowlink] {dropped} log lines (")
    assert lines[-1].endswith(" bytes) over the limit were dropped")


def test_the_byte_cap_and_the_traceback_after_it(capped: LiveServer) -> None:
    # 200 lines of ~1,000 bytes: about 100 fit in 100,000 bytes
    script = "x" * 996
    record = capped.client.post(
        "/api/v1/workspaces/logs/executions",
        json={
            "script": (
                "def handler(system, this, inputs):\n"
                "    for n in range(200):\n"
                f"        print('{script}', n)\n"
                "    raise RuntimeError('boom')\n"
            ),
            "name": "bytes",
            "wait": 120,
        },
    ).json()
    assert record["status"] == "error", record
    lines = [
        line["line"]
        for line in capped.client.get(
            f"/api/v1/workspaces/logs/executions/{record['id']}/logs"
        ).json()["items"]
    ]
    kept = [line for line in lines if line.startswith(script)]
    assert 95 <= len(kept) <= 100
    assert sum(len(line) + 1 for line in kept) <= 100_000
    assert any(line.startswith("[flowlink] log limit reached") for line in lines)
    summary = next(i for i, line in enumerate(lines) if "over the limit were dropped" in line)
    assert lines[summary].startswith(f"[flowlink] {200 - len(kept)} log lines (")
    # the traceback is not subject to the cap: it comes after the summary
    assert any("RuntimeError: boom" in line for line in lines[summary:])


def test_log_cap_counts() -> None:
    cap = LogCap(max_lines=3, max_bytes=1000)
    assert cap.admit(["a", "b"]) == ["a", "b"]
    kept = cap.admit(["c", "d", "é"])
    assert kept[0] == "c" and kept[1].startswith("[flowlink] log limit reached")
    assert cap.admit(["e"]) == []
    assert (cap.dropped_lines, cap.dropped_bytes) == (3, 2 + 3 + 2)
    assert cap.summary() == "[flowlink] 3 log lines (7 bytes) over the limit were dropped"
    assert LogCap(10, 10).summary() is None
