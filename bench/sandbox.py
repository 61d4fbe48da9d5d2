"""Benchmark: what the per-execution sandbox costs, and how fast its limits stop a script.

Run with ``.venv/bin/python bench/sandbox.py`` (as root for the full sandbox). Prints the CPU
time per trivial execution (pool, zygote and runners together; CPU rather than wall time, so
that a busy machine still gives comparable figures) with control groups and with the rlimit
fallback, then how long each limit takes to end a runaway script.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from flowlink.runtime.pool import RunnerLimits, RunnerPool
from flowlink.runtime.session import Outcome, drive

sys.path.insert(0, str(Path(__file__).parent))
from common import print_floors, report

TRIVIAL = "def handler(system, this):\n    return this.success('ok')\n"
FOUR_CHILDREN = """
import os, time

def handler(system, this):
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            hog = bytearray(100 << 20)
            for i in range(0, len(hog), 4096):
                hog[i] = 1
            time.sleep(20)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.waitpid(pid, 0)
    return this.success('children done')
"""
FORK_BOMB = """
import os

def handler(system, this):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""
FOUR_SPINNERS = """
import os

def handler(system, this):
    for _ in range(3):
        if os.fork() == 0:
            break
    while True:
        pass
"""
#: CPU per trivial execution the sandbox should stay under (ms)
TARGET_CPU_MS = 6.0


def run(pool: RunnerPool, script: str, timeout: float = 60.0) -> tuple[Outcome, float]:
    """One execution; returns its outcome and wall time."""
    start: dict[str, Any] = {
        "execution": {"id": 1, "name": "bench", "workspace": "bench", "input_value": {}},
        "script": script,
        "inputs": {},
        "config": {},
    }
    began = time.monotonic()
    outcome = drive(
        pool.acquire(),
        start,
        handle_call=lambda method, params: None,
        on_logs=lambda lines: None,
        deadline=began + timeout,
        cancelled=threading.Event(),
    )
    return outcome, time.monotonic() - began


def zygote_faults(pool: RunnerPool) -> int:
    """Page faults of the zygote and of its runners reaped so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pool.zygote_pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[7]) + int(fields[8])  # minflt, cminflt


def cpu_per_execution(count: int, cgroups: bool) -> tuple[float, float, dict[str, Any]]:
    """CPU ms per trivial execution (this process + zygote + runners), page faults per execution
    of the zygote and its runners, and the sandbox info.

    The faults are mostly copies of the zygote's pages that a runner (or the zygote, after each
    fork) writes to: the count of what a fresh process per execution costs, immune to the load.
    """
    pool = RunnerPool(warm_size=2, limits=RunnerLimits(memory_mb=512), cgroups=cgroups)
    pool.start()
    info = pool.sandbox_info()
    for _ in range(20):
        run(pool, TRIVIAL)
    before = os.times()
    faults_before = zygote_faults(pool)
    for _ in range(count):
        outcome, _ = run(pool, TRIVIAL)
        assert outcome.status == "success", outcome
    faults = zygote_faults(pool) - faults_before
    pool.close()  # the zygote is reaped: its CPU and its runners' count as children now
    after = os.times()
    used = (after.user + after.system + after.children_user + after.children_system) - (
        before.user + before.system + before.children_user + before.children_system
    )
    return used / count * 1000, faults / count, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=300, help="trivial executions per variant")
    args = parser.parse_args()
    print_floors()  # a runner is a fork of a warm interpreter (the zygote)
    for cgroups in (True, False):
        ms, faults, info = cpu_per_execution(args.count, cgroups)
        print(
            f"{info['mode']} sandbox, limits by {info['limits']}, private tmp"
            f" {info['private_tmp']}, seccomp {info['seccomp']}:"
        )
        report("CPU per trivial execution", ms, TARGET_CPU_MS, "ms")
        print(f"  page faults per execution (zygote and runner): {faults:.0f}")
    limits = RunnerLimits(cpu_seconds=2, memory_mb=256, processes=32)
    for cgroups in (True, False):
        pool = RunnerPool(warm_size=1, limits=limits, cgroups=cgroups)
        pool.start()
        print(f"\nlimits by {pool.sandbox_info()['limits']} (256 MB, 32 processes, 2 s CPU):")
        for name, script, timeout in (
            ("four children x 100 MB", FOUR_CHILDREN, 60.0),
            ("fork bomb", FORK_BOMB, 20.0),
            ("four processes spinning", FOUR_SPINNERS, 60.0),
        ):
            outcome, elapsed = run(pool, script, timeout)
            print(f"  {name}: {outcome.status} ({outcome.message}) after {elapsed:.2f} s")
        pool.close()


if __name__ == "__main__":
    sys.exit(main())
