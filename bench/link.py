"""Benchmark: workspace links between two real servers on loopback (immediate mode).

- round trip: start a remote execution in A and see its success in A (p50/p99), with the
  CPU time both servers (and their runners) spent per round trip;
- throughput: remote executions per second over one link, for 1,000 runs;
- drain: 10,000 remote executions queued in A while the link is cut (by a TCP proxy), then
  the time until every message is delivered (A's outbox empty) and until every run has
  ended in A, with the count of lost and duplicated runs (both must be 0).

Run with ``make bench`` (or ``.venv/bin/python bench/link.py [--quick]``). PostgreSQL is
included when ``FLOWLINK_BENCH_POSTGRES_URL`` or ``FLOWLINK_TEST_POSTGRES_URL`` is reachable.

``--counts`` runs both servers with the counters of ``bench/counting`` and prints, per round
trip and per remote execution of the throughput run, what each server did: transactions,
commits, SQL statements, exchanges, messages, RSA signatures, keys parsed, HTTP requests.
Counts do not depend on how busy the machine is, wall times do.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import (
    apply_folder,
    fresh_database,
    goal_note,
    load_note,
    percentile,
    postgres_url,
    report,
    server,
)

from tests.linking.servers import TcpProxy
from tests.linking.servers import execution_counts as counts

SEED = "def handler(system, this, inputs):\n    return this.success('all done')\n"
TARGETS = {
    "sqlite": {"p50_ms": 30.0, "rate": 300.0, "drain_s": 60.0},
    "postgresql": {"p50_ms": 50.0, "rate": 300.0, "drain_s": 60.0},
}
COUNTING = Path(__file__).parent / "counting"
EXECUTIONS = "/api/v1/workspaces/ws-a/executions"
SERVER_ENV = {"FLOWLINK_LINK_BACKOFF_MAX": "1", "FLOWLINK_LINK_REFRESH": "0.5"}


def key_pair(folder: Path, name: str) -> tuple[str, str]:
    """An RSA key pair made with openssl: (private PEM, public PEM)."""
    path = folder / f"{name}.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(path), "2048"], check=True, capture_output=True
    )
    public = subprocess.run(
        ["openssl", "rsa", "-in", str(path), "-pubout"], check=True, capture_output=True, text=True
    ).stdout
    return path.read_text(), public


def link(a: Any, b: Any, b_url: str, folder: Path) -> None:
    """Link workspace a (controlling, connecting, immediate mode) to workspace b."""
    a_private, a_public = key_pair(folder, "a")
    b_private, b_public = key_pair(folder, "b")
    b.client.post(
        "/api/v1/workspaces/ws-b/sync_config",
        json={"name": "from-a", "own_private_key": b_private, "remote_public_key": a_public},
    ).raise_for_status()
    a.client.post(
        "/api/v1/workspaces/ws-a/sync_config",
        json={
            "name": "to-b",
            "remote_url": f"{b_url}/api/v1/workspaces/ws-b/sync_config/from-a/sync",
            "own_private_key": a_private,
            "remote_public_key": b_public,
        },
    ).raise_for_status()


def outbox_depth(client: httpx.Client) -> int:
    """Messages waiting in A's outbox."""
    return int(client.get("/api/v1/workspaces/ws-a/sync_config/to-b").json()["outbox_depth"])


def wait_ended(database_url: str, total: int, timeout: float) -> float:
    """Seconds until ``total`` executions have ended in this store."""
    start = time.perf_counter()
    while True:
        now = counts(database_url)
        if sum(now.get(s, 0) for s in ("success", "error", "cancelled")) >= total:
            return time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            raise RuntimeError(f"not all {total} executions ended in {timeout}s: {now}")
        time.sleep(0.05)


def submit(client: httpx.Client, count: int) -> None:
    """Start ``count`` remote executions in batches of 500."""
    for start in range(0, count, 500):
        batch = [{"flow": "seed", "remote": "to-b"}] * min(500, count - start)
        client.post(f"{EXECUTIONS}/batch", json={"executions": batch}).raise_for_status()


class Meter:
    """CPU seconds of a server process and its children, and its counters (with ``--counts``)."""

    def __init__(self, pid: int, counts_file: Path | None) -> None:
        self.process = psutil.Process(pid)
        self.counts_file = counts_file

    def cpu(self) -> float:
        """User + system CPU seconds of the server and its live children (runners)."""
        total = 0.0
        for process in [self.process, *self.process.children(recursive=True)]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def counts(self) -> dict[str, int]:
        """The server's counters now (empty without ``--counts``)."""
        if self.counts_file is None:
            return {}
        time.sleep(0.25)  # the server writes them every 0.1 s
        return dict(json.loads(self.counts_file.read_text()))

    def snapshot(self) -> tuple[float, dict[str, int]]:
        """CPU and counters at this moment."""
        return self.cpu(), self.counts()


def per_unit(
    before: tuple[float, dict[str, int]], after: tuple[float, dict[str, int]], units: int
) -> dict[str, float]:
    """What happened between two snapshots, per unit (round trip or execution); CPU in ms."""
    moved = {"cpu_ms": (after[0] - before[0]) * 1000 / units}
    for name, value in after[1].items():
        if value != before[1].get(name, 0):
            moved[name] = (value - before[1].get(name, 0)) / units
    return moved


def counting_env(folder: Path, name: str, enabled: bool) -> dict[str, str]:
    """Environment for a server that counts (``bench/counting``) when ``enabled``."""
    if not enabled:
        return {}
    path = [str(COUNTING), os.environ.get("PYTHONPATH", "")]
    return {
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "FLOWLINK_BENCH_COUNTS": str(folder / f"{name}.counts.json"),
    }


def run_backend(
    backend: str, round_trips: int, runs: int, drain: int, with_counts: bool = False
) -> dict[str, Any]:
    """All measurements on one backend."""
    folder = Path(__import__("tempfile").mkdtemp(prefix="flowlink-bench-link-"))
    env_a = {**SERVER_ENV, **counting_env(folder, "a", with_counts)}
    env_b = {**SERVER_ENV, **counting_env(folder, "b", with_counts)}
    with (
        fresh_database(backend) as url_a,
        fresh_database(backend) as url_b,
        server(url_b, **env_b) as b,
        TcpProxy.to_url(b.url) as proxy,
        server(url_a, **env_a) as a,
    ):
        meters = {
            "A": Meter(a.process.pid, folder / "a.counts.json" if with_counts else None),
            "B": Meter(b.process.pid, folder / "b.counts.json" if with_counts else None),
        }
        apply_folder(
            a.client, "ws-a", {"workspace.yml": "name: A\nslug: ws-a\n", "flows/seed.py": SEED}
        )
        apply_folder(b.client, "ws-b", {"workspace.yml": "name: B\nslug: ws-b\n"})
        link(a, b, b.url, folder)  # direct; the drain goes through the proxy
        time.sleep(2.0)  # connectors start, warm pools fill
        for _ in range(20):  # warm-up
            a.client.post(EXECUTIONS, json={"flow": "seed", "remote": "to-b", "wait": 30})
        time.sleep(0.5)  # the last acks go out
        before = {side: meter.snapshot() for side, meter in meters.items()}
        trips = []
        for _ in range(round_trips):
            start = time.perf_counter()
            record = a.client.post(
                EXECUTIONS, json={"flow": "seed", "remote": "to-b", "wait": 30}
            ).json()
            trips.append((time.perf_counter() - start) * 1000)
            assert record["status"] == "success", record
        time.sleep(0.5)  # the last acks go out
        per_trip = {
            side: per_unit(before[side], meter.snapshot(), round_trips)
            for side, meter in meters.items()
        }
        done = 20 + round_trips
        before = {side: meter.snapshot() for side, meter in meters.items()}
        submit(a.client, runs)
        elapsed = wait_ended(url_a, done + runs, 300)
        rate = runs / elapsed
        time.sleep(0.5)
        per_run = {
            side: per_unit(before[side], meter.snapshot(), runs) for side, meter in meters.items()
        }
        done += runs
        if not drain:
            return {**figures(trips, rate, per_trip, per_run), "drain_s": float("nan")}
        proxy.cut()
        a.client.patch(
            "/api/v1/workspaces/ws-a/sync_config/to-b",
            json={"remote_url": f"{proxy.url()}/api/v1/workspaces/ws-b/sync_config/from-a/sync"},
        ).raise_for_status()
        submit(a.client, drain)
        time.sleep(1.0)
        queued = outbox_depth(a.client)
        proxy.heal()
        start = time.perf_counter()
        while outbox_depth(a.client) > 0:
            if time.perf_counter() - start > 600:
                raise RuntimeError("the outbox did not drain in 600 s")
            time.sleep(0.05)
        delivered = time.perf_counter() - start
        completed = delivered + wait_ended(url_a, done + drain, 600)
        a_counts, b_counts = counts(url_a), counts(url_b)
    total = done + drain
    return {
        **figures(trips, rate, per_trip, per_run),
        "queued_messages": queued,
        "drain_s": delivered,
        "complete_s": completed,
        "lost": total - a_counts.get("success", 0),
        "duplicated": sum(b_counts.values()) - total,
    }


def figures(
    trips: list[float], rate: float, per_trip: dict[str, Any], per_run: dict[str, Any]
) -> dict[str, Any]:
    """The round trip and throughput figures."""
    return {
        "p50_ms": percentile(trips, 50),
        "p99_ms": percentile(trips, 99),
        "rate": rate,
        "per_trip": per_trip,
        "per_run": per_run,
    }


def print_counts(title: str, sides: dict[str, dict[str, float]]) -> None:
    """One line per counter: server A's and B's figure per unit."""
    print(title)
    names = sorted({name for moved in sides.values() for name in moved})
    for name in names:
        line = "  ".join(f"{side} {moved.get(name, 0.0):8.2f}" for side, moved in sides.items())
        print(f"  {name:<48} {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    parser.add_argument(
        "--counts", action="store_true", help="count transactions, exchanges, signatures..."
    )
    parser.add_argument("--no-drain", action="store_true", help="skip the outage and drain part")
    args = parser.parse_args()
    sizes = (50, 200, 1000) if args.quick else (200, 1000, 10_000)
    if args.no_drain:
        sizes = (*sizes[:2], 0)
    backends = args.backend or (["sqlite", "postgresql"] if postgres_url() else ["sqlite"])
    for backend in backends:
        found = run_backend(backend, *sizes, with_counts=args.counts)
        targets = TARGETS[backend]
        print(f"\n== {backend}: link between two servers on loopback (immediate mode)")
        print(f"  {load_note()}")
        trip_cpu = found["per_trip"]
        report(
            "round trip p50",
            found["p50_ms"],
            targets["p50_ms"],
            "ms",
            note=f"p99 {found['p99_ms']:.1f} ms; CPU per round trip"
            f" A {trip_cpu['A']['cpu_ms']:.1f} + B {trip_cpu['B']['cpu_ms']:.1f} ms",
        )
        run_cpu = found["per_run"]
        report(
            f"remote executions/s over one link ({sizes[1]})",
            found["rate"],
            targets["rate"],
            "/s",
            at_least=True,
            note=f"CPU per execution A {run_cpu['A']['cpu_ms']:.1f}"
            f" + B {run_cpu['B']['cpu_ms']:.1f} ms",
        )
        if sizes[2]:
            print(
                f"  drain {found['queued_messages']:.0f} queued messages after an outage:"
                f" delivered in {found['drain_s']:.1f} s"
                f" ({goal_note(found['drain_s'], targets['drain_s'])}),"
                f" all {sizes[2]} runs ended in A after {found['complete_s']:.1f} s;"
                f" lost {found['lost']:.0f}, duplicated {found['duplicated']:.0f}"
                f" ({'ok' if found['lost'] == found['duplicated'] == 0 else 'MISSED'})"
            )
        print(f"  ({load_note()} at the end)")
        if args.counts:
            print_counts("per round trip:", found["per_trip"])
            print_counts(f"per remote execution ({sizes[1]} in batches):", found["per_run"])


if __name__ == "__main__":
    main()
