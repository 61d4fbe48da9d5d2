"""Pool behaviour: one runner per execution, refill, throughput, shutdown, zygote restart."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flowlink.runtime import pool as pool_module
from flowlink.runtime import sandbox
from flowlink.runtime.errors import RunnerError
from flowlink.runtime.pool import Runner, RunnerPool
from flowlink.runtime.session import Outcome, drive

from .conftest import PoolFactory, pid_gone, run_script, uid_gone

TRIVIAL = {
    "execution": {"id": 1, "name": "trivial"},
    "script": "def handler(system, this, inputs):\n    return this.success('ok')\n",
    "inputs": {},
    "config": {},
}


def _drive(runner: Runner, start: dict[str, Any] = TRIVIAL) -> Outcome:
    return drive(
        runner,
        start,
        handle_call=lambda method, params: None,
        on_logs=lambda lines: None,
        deadline=time.monotonic() + 20,
        cancelled=threading.Event(),
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_runner_is_never_reused(pool: RunnerPool) -> None:
    first = pool.acquire()
    second = pool.acquire()
    assert first.pid != second.pid and first.uid != second.uid
    assert _drive(first).status == "success"
    with pytest.raises(RunnerError):
        _drive(first)
    assert pid_gone(first.pid)
    assert not os.path.exists(first.tmpdir)
    second.close()  # never used: closing kills it
    assert pid_gone(second.pid)
    with pytest.raises(RunnerError):
        _drive(second)
    pids = {run_script(pool, "def handler(s, t):\n    pass\n").runner.pid for _ in range(5)}
    assert len(pids) == 5


def test_pool_refills_in_the_background(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=3)
    assert wait_for(lambda: p.warm_count == 3)
    taken = [p.acquire() for _ in range(3)]
    assert wait_for(lambda: p.warm_count == 3)
    # acquire beyond the warm ones forks synchronously
    extra = [p.acquire() for _ in range(5)]
    assert len({r.pid for r in taken + extra}) == 8
    for runner in taken + extra:
        runner.close()
        assert pid_gone(runner.pid)


def test_warm_runners_are_already_sandboxed(pool: RunnerPool) -> None:
    runner = pool.acquire()
    try:
        with open(f"/proc/{runner.pid}/status") as fh:
            status = fh.read()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if pool.mode == "full":
            assert uid_line.split()[1:] == [str(runner.uid)] * 4
        assert os.path.isdir(runner.tmpdir)
        assert os.getpgid(runner.pid) == runner.pid  # own session / process group
    finally:
        runner.close()


def test_200_sequential_trivial_executions(pool: RunnerPool) -> None:
    count = 200
    began = time.perf_counter()
    for _ in range(count):
        outcome = _drive(pool.acquire())
        assert outcome.status == "success", outcome
    elapsed = time.perf_counter() - began
    print(
        f"\n{count} sequential trivial executions: {elapsed:.3f} s "
        f"({elapsed / count * 1000:.2f} ms per execution)"
    )


def test_concurrent_executions(pool: RunnerPool) -> None:
    results: list[str] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(20):
            outcome = _drive(pool.acquire())
            with lock:
                results.append(outcome.status)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == ["success"] * 80


def test_close_kills_everything(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=2)
    assert wait_for(lambda: p.warm_count == 2)
    busy = p.acquire()
    zygote = p.zygote_pid
    assert zygote is not None
    base = p.base_dir
    result: dict[str, Outcome] = {}

    def run_forever() -> None:
        result["outcome"] = drive(
            busy,
            {"execution": {"name": "loop"}, "script": "def handler(s, t):\n    while True: pass\n"},
            handle_call=lambda m, p: None,
            on_logs=lambda lines: None,
            deadline=None,
            cancelled=threading.Event(),
        )

    thread = threading.Thread(target=run_forever)
    thread.start()
    time.sleep(0.2)
    p.close()
    thread.join(10)
    assert not thread.is_alive()
    outcome = result["outcome"]
    assert outcome.status == "error" and outcome.error_kind == "runner_lost"
    assert pid_gone(zygote) and pid_gone(busy.pid)
    if p.mode != "unprivileged":
        assert uid_gone(busy.uid)
    assert not os.path.exists(base)
    with pytest.raises(RunnerError):
        p.acquire()


def test_pool_recovers_when_the_zygote_dies(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=1)
    assert wait_for(lambda: p.warm_count == 1)
    old = p.zygote_pid
    assert old is not None
    warm = p._warm[0]
    os.kill(old, 9)
    assert pid_gone(old)
    # the warm runner died with its zygote (parent-death signal); the pool starts a new zygote
    assert pid_gone(warm.pid)
    run = run_script(p, "def handler(s, t):\n    return t.success('again')\n")
    assert run.outcome.message == "again"
    assert p.zygote_pid != old
    if p.mode != "unprivileged":
        assert not sandbox.uid_processes(warm.uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the sweeper exists in root modes only")
def test_sweeper_is_restarted_when_killed(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=1)
    assert wait_for(lambda: p.warm_count == 1)
    zygote = p.zygote_pid

    def root_children() -> list[int]:
        found = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status") as fh:
                    fields = dict(line.split(":", 1) for line in fh if ":" in line)
            except OSError:
                continue
            if int(fields["PPid"]) == zygote and fields["Uid"].split()[0] == "0":
                found.append(int(entry))
        return found

    sweepers = root_children()
    assert len(sweepers) == 1
    os.kill(sweepers[0], 9)
    assert wait_for(lambda: len(root_children()) == 1 and root_children() != sweepers)
    run = run_script(
        p, "import os\ndef handler(system, this):\n    while True:\n        os.fork()\n"
    )
    assert run.outcome.error_kind == "process_limit"
    assert sandbox.uid_processes(run.runner.uid) == []


def test_warm_runner_that_died_is_not_handed_out(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=1)
    assert wait_for(lambda: p.warm_count == 1)
    victim = p._warm[0]
    os.kill(victim.pid, 9)
    assert wait_for(lambda: victim.wait_exit(0) is not None)
    run = run_script(p, "def handler(system, this):\n    return this.success('fine')\n")
    assert run.runner.pid != victim.pid
    assert run.outcome.message == "fine"


def test_stale_base_dirs_of_dead_pools_are_removed(
    pool: RunnerPool, fresh_pool_factory: PoolFactory
) -> None:
    parent = pool_module._base_parent()
    stale = tempfile.mkdtemp(prefix="flowlink-runners-", dir=parent)
    os.mkdir(os.path.join(stale, "flowlink-run-1-abc"))
    with open(os.path.join(stale, ".owner.lock"), "w"):
        pass  # nobody holds the lock: its pool is gone
    unrelated = tempfile.mkdtemp(prefix="flowlink-runners-", dir=parent)  # no lock file: left alone
    try:
        fresh_pool_factory(warm_size=0)
        assert not os.path.exists(stale)
        assert os.path.isdir(unrelated)
        assert os.path.isdir(pool.base_dir)  # a live pool's directory is kept
    finally:
        shutil.rmtree(stale, ignore_errors=True)
        os.rmdir(unrelated)
