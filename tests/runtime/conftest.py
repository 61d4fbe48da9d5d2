"""Fixtures for the runtime tests: real pools, real processes, a dict-backed fake worker."""

from __future__ import annotations

import os
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from flowlink.runtime import flow_api, sandbox
from flowlink.runtime.pool import Runner, RunnerLimits, RunnerPool
from flowlink.runtime.session import Outcome, drive

TEST_LIMITS = RunnerLimits(cpu_seconds=60, memory_mb=256, open_files=64, processes=32)


@dataclass
class FakeWorker:
    """Stands in for the worker's store behind ``handle_call``."""

    settings: dict[str, Any] = field(default_factory=dict)
    flows: dict[str, dict[str, Any]] = field(default_factory=dict)
    executions: dict[Any, dict[str, Any]] = field(default_factory=dict)
    events: list[tuple[str, Any]] = field(default_factory=list)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    saves: list[dict[str, Any]] = field(default_factory=list)
    child_status: str = "success"
    user: dict[str, Any] = field(default_factory=lambda: {"id": 7, "name": "alice"})
    next_child: int = 100

    def handle_call(self, method: str, params: dict[str, Any]) -> Any:
        self.calls.append((method, params))
        if method == "execution.get":
            record = self.executions.get(params["id"] if params["id"] is not None else 1)
            if record is None:
                raise flow_api.ResourceNotFoundError(f"execution {params['id']} not found")
            return record.get(params["field"])
        if method == "execution.save":
            self.saves.append(params)
            return None
        if method == "execution.start_child":
            if params["flow"] not in self.flows:
                raise flow_api.ResourceNotFoundError(f"flow {params['flow']!r} not found")
            child_id = self.next_child
            self.next_child += 1
            self.executions[child_id] = {
                "id": child_id,
                "name": params["flow"],
                "status": self.child_status,
                "message": "child failed" if self.child_status == "error" else "child ok",
                "input_value": params["inputs"],
                "output_value": {"doubled": 2 * params["inputs"].get("x", 0)},
            }
            return {"id": child_id}
        if method == "execution.wait":
            return self.executions[params["id"]]
        if method == "execution.emit":
            self.events.append((params["type"], params["payload"]))
            return None
        if method == "setting.get":
            if params["name"] not in self.settings:
                raise flow_api.ResourceNotFoundError(f"setting {params['name']!r} not found")
            return self.settings[params["name"]]
        if method == "setting.save":
            if params["name"].startswith("locked"):
                raise flow_api.PermissionDeniedError("setting is read-only")
            self.settings[params["name"]] = params["value"]
            return None
        if method == "setting.exists":
            return params["name"] in self.settings
        if method == "setting.delete":
            if self.settings.pop(params["name"], None) is None:
                raise flow_api.ResourceNotFoundError(f"setting {params['name']!r} not found")
            return None
        if method == "flow.get":
            flow = self.flows.get(params["name"])
            if flow is None:
                raise flow_api.ResourceNotFoundError(f"flow {params['name']!r} not found")
            return flow.get(params["field"])
        if method == "user.get_own":
            return self.user
        if method == "boom":
            raise RuntimeError("worker bug")
        raise flow_api.FlowApiError(f"unknown method {method}")


@dataclass
class Run:
    outcome: Outcome
    logs: list[str]
    worker: FakeWorker
    runner: Runner
    elapsed: float


def run_script(
    pool: RunnerPool,
    script: str,
    *,
    inputs: dict[str, Any] | None = None,
    worker: FakeWorker | None = None,
    timeout: float | None = 20.0,
    cancelled: threading.Event | None = None,
    name: str = "test",
    config: dict[str, Any] | None = None,
) -> Run:
    """Run ``script`` (dedented) through acquire + drive."""
    worker = worker or FakeWorker()
    worker.executions.setdefault(
        1, {"id": 1, "name": name, "status": "running", "message": None, "output_value": {}}
    )
    logs: list[str] = []
    runner = pool.acquire()
    start = {
        "execution": {"id": 1, "name": name, "workspace": "default", "input_value": inputs or {}},
        "script": textwrap.dedent(script),
        "inputs": inputs or {},
        "config": config or {},
    }
    t0 = time.monotonic()
    outcome = drive(
        runner,
        start,
        handle_call=worker.handle_call,
        on_logs=logs.extend,
        deadline=None if timeout is None else t0 + timeout,
        cancelled=cancelled or threading.Event(),
    )
    return Run(outcome, logs, worker, runner, time.monotonic() - t0)


def uid_gone(uid: int, timeout: float = 5.0) -> bool:
    """True once no process (not even a zombie) of ``uid`` is left."""
    deadline = time.monotonic() + timeout
    while sandbox.uid_processes(uid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def pid_gone(pid: int, timeout: float = 5.0) -> bool:
    """True once /proc/<pid> is gone."""
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def cgroups_expected() -> bool:
    """Root with a writable cgroup v1 memory hierarchy or a v2 main hierarchy (dev, CI)."""
    return os.geteuid() == 0 and any(
        os.access(path, os.W_OK)
        for path in ("/sys/fs/cgroup/memory", "/sys/fs/cgroup/cgroup.controllers")
    )


requires_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="sandbox uid/namespace tests need root"
)

#: Tests that fill a tmpfs by hundreds of MB, and the one that measures the host's shared
#: memory (``Shmem`` in /proc/meminfo): under pytest-xdist (``make test``) one worker runs
#: them one after the other, so that no other test's tmpfs fills while one measures.
SHMEM = pytest.mark.xdist_group("shmem")


@pytest.fixture(scope="session")
def pool() -> Iterator[RunnerPool]:
    """A shared pool with small limits."""
    p = RunnerPool(warm_size=2, limits=TEST_LIMITS)
    p.start()
    yield p
    p.close()


PoolFactory = Callable[..., RunnerPool]


@pytest.fixture()
def fresh_pool_factory() -> Iterator[PoolFactory]:
    """Build extra pools (closed at the end of the test)."""
    pools: list[RunnerPool] = []

    def make(**kwargs: Any) -> RunnerPool:
        kwargs.setdefault("limits", TEST_LIMITS)
        kwargs.setdefault("warm_size", 1)
        p = RunnerPool(**kwargs)
        p.start()
        pools.append(p)
        return p

    yield make
    for p in pools:
        p.close()
