"""Benchmark: scale-out of worker processes on one PostgreSQL store.

For 1, 2 and 4 ``flowlink worker`` processes: 5,000 trivial executions are queued in one
transaction once every worker has registered, and the time until all have ended is measured.
Prints executions/s, the speed-up over one worker (goal: >= 1.8x for two where the cores
allow it), the machine's CPU use during each drain (to show where the bound is), and checks
from the store that no execution ran twice (exactly one ``executions.started`` event each,
all ended as ``success``).

Run with ``make bench`` (or ``.venv/bin/python bench/scaleout.py [--quick]``). Needs
``FLOWLINK_BENCH_POSTGRES_URL`` or ``FLOWLINK_TEST_POSTGRES_URL``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import FLOWLINK, fresh_database, postgres_url, report
from sqlalchemy import func, select

from flowlink.assembly import open_store
from flowlink.executions import service as executions
from flowlink.executions import workers as registry
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution
from flowlink.workspaces import service as workspaces

TRIVIAL = "def handler(system, this, inputs):\n    return this.success('ok')\n"
TARGET_SPEEDUP = 1.8
WORKER_ENV = {"FLOWLINK_POLL_INTERVAL": "0.5", "FLOWLINK_LEASE_SECONDS": "15"}


def start_workers(database_url: str, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes on the store, each in its own process group."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLINK_")}
    env.update(WORKER_ENV, FLOWLINK_DATABASE_URL=database_url, FLOWLINK_SECRET_KEY="bench")
    return [
        subprocess.Popen(
            [*FLOWLINK, "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(count)
    ]


def stop_workers(processes: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each worker, then SIGKILL its group if it lingers."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_registered(store: Store, count: int, timeout: float = 60) -> None:
    """Until ``count`` workers heartbeat (their runner pools are up)."""
    deadline = time.monotonic() + timeout
    while True:
        with store.read() as session:
            if registry.running_count(session) >= count:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not register in {timeout} s")
        time.sleep(0.2)


def ended_count(store: Store) -> int:
    """Executions that have ended."""
    with store.read() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Execution)
                .where(Execution.status.in_(executions.ENDED))
            )
            or 0
        )


def drain(workers: int, total: int) -> dict[str, float]:
    """Queue ``total`` executions for ``workers`` processes; time the drain and check it."""
    with fresh_database("postgresql") as url:
        store = open_store(ServerSettings(database_url=url))
        with store.write() as session:
            workspace = workspaces.create_workspace(session, "scale")
            workspaces.put_flow(session, workspace, "trivial", TRIVIAL)
        processes = start_workers(url, workers)
        try:
            wait_registered(store, workers)
            psutil.cpu_percent(interval=None)  # start the machine-wide CPU meter
            meters = [psutil.Process(p.pid) for p in processes]
            cpu_before = [sum(m.cpu_times()[:2]) for m in meters]
            with store.write() as session:
                workspace = workspaces.get_workspace(session, "scale")
                for _ in range(total):
                    executions.create_execution(session, workspace, flow_name="trivial")
            began = time.perf_counter()
            while ended_count(store) < total:
                if time.perf_counter() - began > 900:
                    raise RuntimeError(f"{total} executions did not end in 900 s")
                time.sleep(0.05)
            elapsed = time.perf_counter() - began
            cpu = psutil.cpu_percent(interval=None)
            busiest = max(
                (sum(m.cpu_times()[:2]) - before) / elapsed
                for m, before in zip(meters, cpu_before, strict=True)
            )
        finally:
            stop_workers(processes)
        with store.read() as session:
            statuses = Counter(session.scalars(select(Execution.status)))
            starts = Counter(
                session.scalars(
                    select(Event.payload["id"].as_string()).where(
                        Event.type == "executions.started"
                    )
                )
            )
            by_worker = Counter(session.scalars(select(Execution.worker_id)))
        store.dispose()
    twice = sum(1 for n in starts.values() if n > 1)
    assert statuses == {"success": total}, statuses
    assert len(starts) == total, f"{total - len(starts)} executions never started"
    return {
        "seconds": elapsed,
        "rate": total / elapsed,
        "cpu": cpu,
        "busiest": busiest * 100,
        "twice": twice,
        "workers_used": len(by_worker),
    }


def main() -> None:
    """Run 1, 2 and 4 workers and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1,000 executions instead of 5,000")
    args = parser.parse_args()
    total = 1000 if args.quick else 5000
    if postgres_url() is None:
        print("scale-out: skipped (needs PostgreSQL: set FLOWLINK_BENCH_POSTGRES_URL)")
        return
    cores = psutil.cpu_count() or 1
    print(f"== scale-out: {total} trivial executions on one PostgreSQL, {cores} cores ==")
    results: dict[int, dict[str, float]] = {}
    for workers in (1, 2, 4):
        r = results[workers] = drain(workers, total)
        print(
            f"  {workers} worker(s): {r['seconds']:.1f} s, {r['rate']:.0f} executions/s,"
            f" machine CPU {r['cpu']:.0f}%, busiest worker process {r['busiest']:.0f}% of a"
            f" core, {r['workers_used']:.0f} worker(s) took part,"
            f" run twice: {r['twice']:.0f}"
        )
    base = results[1]["rate"]
    report("speed-up 2 workers vs 1", results[2]["rate"] / base, TARGET_SPEEDUP, "x", at_least=True)
    print(f"  speed-up 4 vs 1: {results[4]['rate'] / base:.2f}x")
    busiest = max(r["busiest"] for r in results.values())
    least_cpu = min(r["cpu"] for r in results.values())
    load = os.getloadavg()[0]
    if least_cpu >= 90 and busiest < 90:
        print(
            f"  where the bound is: the machine's {cores} cores were >= {least_cpu:.0f}% busy in"
            f" every run (load average {load:.1f}, every process counted), and no worker"
            f" process used more than {busiest:.0f}% of a core: the cores are the bound, not a"
            " worker or the store's claiming. With other load on the machine, more worker"
            " processes also win a larger share of the cores, so the ratios are an upper bound"
            " for an idle machine of this size"
        )
    else:
        print(
            f"  CPU: machine {least_cpu:.0f}% busy at least, busiest worker process"
            f" {busiest:.0f}% of a core, load average {load:.1f}"
        )
    assert all(r["twice"] == 0 for r in results.values()), "an execution ran twice"


if __name__ == "__main__":
    main()
