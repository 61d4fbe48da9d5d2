"""Real worker processes on a shared store: no double runs, and a killed worker is detected."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from sqlalchemy import func, select

from flowlink.executions import service as executions
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution, ExecutionLog, Workspace
from flowlink.workspaces import service as workspaces

ONE_LINE = "def handler(system, this, inputs):\n    this.log('ran', inputs['i'])\n"
SLOW = "import time\ndef handler(system, this, inputs):\n    time.sleep(120)\n"


def start_worker(database_url: str, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "FLOWLINK_DATABASE_URL": database_url,
        "FLOWLINK_SECRET_KEY": "test",
        "FLOWLINK_POLL_INTERVAL": "0.1",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "flowlink.cli.main", "worker"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def make_workspace(store: Store) -> Workspace:
    with store.write() as session:
        ws = workspaces.create_workspace(session, "procs")
        workspaces.put_flow(session, ws, "one", ONE_LINE)
        workspaces.put_flow(session, ws, "slow", SLOW)
        return ws


def wait_until(predicate: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.1)


@pytest.mark.slow
def test_two_workers_never_run_an_execution_twice(store: Store, database_url: str) -> None:
    ws = make_workspace(store)
    with store.write() as session:
        for i in range(300):
            executions.create_execution(session, ws, flow_name="one", inputs={"i": i})
    workers = [start_worker(database_url) for _ in range(2)]
    try:

        def all_ended() -> bool:
            with store.read() as session:
                return (
                    session.scalar(
                        select(func.count())
                        .select_from(Execution)
                        .where(Execution.status.in_(executions.ENDED))
                    )
                    == 300
                )

        wait_until(all_ended, 180)
    finally:
        for worker in workers:
            stop(worker)
    with store.read() as session:
        statuses = Counter(session.scalars(select(Execution.status)))
        starts = Counter(
            session.scalars(
                select(Event.payload["id"].as_string()).where(Event.type == "executions.started")
            )
        )
        lines = Counter(session.scalars(select(ExecutionLog.execution_id)))
        by_worker = Counter(session.scalars(select(Execution.worker_id)))
    assert statuses == {"success": 300}
    assert len(starts) == 300 and set(starts.values()) == {1}
    assert len(lines) == 300 and set(lines.values()) == {1}
    assert len(by_worker) == 2, by_worker  # both workers took part


@pytest.mark.slow
def test_killed_worker_is_detected_within_the_lease(store: Store, database_url: str) -> None:
    ws = make_workspace(store)
    with store.write() as session:
        execution_id = executions.create_execution(session, ws, flow_name="slow").id
    worker = start_worker(database_url, FLOWLINK_LEASE_SECONDS="3")

    def status() -> str:
        with store.read() as session:
            execution = session.get(Execution, execution_id)
            assert execution is not None
            return execution.status

    try:
        wait_until(lambda: status() == "running", 30)
        os.killpg(worker.pid, signal.SIGKILL)  # the worker, its zygote and its runners
        worker.wait()
        killed_at = time.monotonic()
        survivor = start_worker(database_url, FLOWLINK_LEASE_SECONDS="3")
        try:
            wait_until(lambda: status() == "error", 30)
        finally:
            stop(survivor)
    finally:
        stop(worker)
    assert time.monotonic() - killed_at <= 30
    with store.read() as session:
        execution = session.get(Execution, execution_id)
        assert execution is not None
        assert execution.error_kind == "worker_lost"
        assert "worker lost" in (execution.message or "")
        running = session.scalar(
            select(func.count()).select_from(Execution).where(Execution.status == "running")
        )
    assert running == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_worker_killed_alone_leaves_no_runner_behind(store: Store, database_url: str) -> None:
    ws = make_workspace(store)
    with store.write() as session:
        execution_id = executions.create_execution(session, ws, flow_name="slow").id
    worker = start_worker(database_url)
    try:
        deadline = time.monotonic() + 30
        while True:
            with store.read() as session:
                execution = session.get(Execution, execution_id)
                assert execution is not None
                if execution.status == "running":
                    break
            assert time.monotonic() < deadline
            time.sleep(0.1)
        import psutil

        descendants = psutil.Process(worker.pid).children(recursive=True)
        assert descendants, "the worker should have a zygote and runners"
        os.kill(worker.pid, signal.SIGKILL)  # only the worker process itself
        worker.wait()
        _gone, alive = psutil.wait_procs(descendants, timeout=15)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
    finally:
        stop(worker)
