"""Runaway scripts: deadline, cancel, memory, fork and CPU limits."""

from __future__ import annotations

import threading

from flowlink.runtime import sandbox
from flowlink.runtime.pool import RunnerLimits, RunnerPool

from .conftest import PoolFactory, pid_gone, requires_root, run_script, uid_gone

INFINITE_LOOP = "def handler(system, this, inputs):\n    while True:\n        pass\n"


def test_infinite_loop_is_killed_at_the_deadline(pool: RunnerPool) -> None:
    run = run_script(pool, INFINITE_LOOP, timeout=1.0)
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "timeout"
    assert run.outcome.message == "maximum runtime of 1 s exceeded"
    assert 0.9 < run.elapsed < 3.0
    assert pid_gone(run.runner.pid)


def test_deadline_also_applies_while_the_script_sleeps_or_logs(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this):
            while True:
                print('spam ' * 20)
        """,
        timeout=0.5,
    )
    assert run.outcome.error_kind == "timeout"
    assert len(run.logs) > 10
    assert run.elapsed < 3.0

    run = run_script(
        pool, "import time\ndef handler(system, this):\n    time.sleep(60)\n", timeout=0.3
    )
    assert run.outcome.error_kind == "timeout"


def test_cancel(pool: RunnerPool) -> None:
    cancelled = threading.Event()
    timer = threading.Timer(0.3, cancelled.set)
    timer.start()
    try:
        run = run_script(pool, INFINITE_LOOP, timeout=30, cancelled=cancelled)
    finally:
        timer.cancel()
    assert run.outcome.status == "cancelled"
    assert run.outcome.error_kind == "cancelled"
    assert run.elapsed < 3.0
    assert pid_gone(run.runner.pid)
    assert uid_gone(run.runner.uid)


def test_memory_bomb_single_allocation(pool: RunnerPool) -> None:
    run = run_script(pool, "def handler(system, this, inputs):\n    x = bytearray(10**10)\n")
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "memory_limit"
    assert run.outcome.message == "memory limit exceeded (256 MB)"
    assert run.outcome.traceback is not None and "line 2" in run.outcome.traceback


def test_memory_bomb_growing_list(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this, inputs):
            hog = []
            while True:
                hog.append('x' * 100_000)
        """,
    )
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "memory_limit"
    assert run.outcome.message == "memory limit exceeded (256 MB)"

    # the same at module level (the list is a global of the script)
    run = run_script(
        pool,
        """
        hog = []
        while True:
            hog.append(list(range(10_000)))
        def handler(system, this):
            pass
        """,
    )
    assert run.outcome.error_kind == "memory_limit"


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(pool: RunnerPool) -> None:
    run = run_script(
        pool, "import os\ndef handler(system, this, inputs):\n    while True:\n        os.fork()\n"
    )
    assert run.outcome.status == "error", run.outcome
    assert run.outcome.error_kind == "process_limit"
    assert run.outcome.message == "process limit exceeded (32 processes)"
    if run.runner.mode != "unprivileged":
        # not a single process (not even a zombie) of the sandbox uid survives drive()
        assert sandbox.uid_processes(run.runner.uid) == []
    # and the pool keeps working
    assert run_script(pool, "def handler(system, this):\n    pass\n").outcome.status == "success"


@requires_root
def test_escaped_background_processes_are_killed(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import os, subprocess

        def handler(system, this):
            proc = subprocess.Popen(['sleep', '300'], start_new_session=True)
            if os.fork() == 0:
                os.setsid()
                os.execvp('sleep', ['sleep', '301'])
            return this.success('left children behind', pid=proc.pid)
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert sandbox.uid_processes(run.runner.uid) == []


def test_cpu_limit(fresh_pool_factory: PoolFactory) -> None:
    cpu_pool = fresh_pool_factory(limits=RunnerLimits(cpu_seconds=1, memory_mb=256, processes=16))
    run = run_script(cpu_pool, INFINITE_LOOP, timeout=30)
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "cpu_limit"
    assert run.outcome.message == "CPU time limit exceeded (1 s)"
    assert run.elapsed < 10
