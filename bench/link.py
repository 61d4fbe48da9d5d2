"""Benchmark: workspace links between two real servers on loopback (immediate mode).

- round trip: start a remote execution in A and see its success in A (p50/p99);
- throughput: remote executions per second over one link, for 1,000 runs;
- drain: 10,000 remote executions queued in A while the link is cut (by a TCP proxy), then
  the time until every message is delivered (A's outbox empty) and until every run has
  ended in A, with the count of lost and duplicated runs (both must be 0).

Run with ``make bench`` (or ``.venv/bin/python bench/link.py [--quick]``). PostgreSQL is
included when ``FLOWLINK_BENCH_POSTGRES_URL`` or ``FLOWLINK_TEST_POSTGRES_URL`` is reachable.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import apply_folder, fresh_database, percentile, postgres_url, server

from tests.linking.servers import TcpProxy
from tests.linking.servers import execution_counts as counts

SEED = "def handler(system, this, inputs):\n    return this.success('all done')\n"
TARGETS = {"p50_ms": 50.0, "rate": 100.0, "drain_s": 60.0}
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


def run_backend(backend: str, round_trips: int, runs: int, drain: int) -> dict[str, float]:
    """All measurements on one backend."""
    folder = Path(__import__("tempfile").mkdtemp(prefix="flowlink-bench-link-"))
    with (
        fresh_database(backend) as url_a,
        fresh_database(backend) as url_b,
        server(url_b, **SERVER_ENV) as b,
        TcpProxy.to_url(b.url) as proxy,
        server(url_a, **SERVER_ENV) as a,
    ):
        apply_folder(
            a.client, "ws-a", {"workspace.yml": "name: A\nslug: ws-a\n", "flows/seed.py": SEED}
        )
        apply_folder(b.client, "ws-b", {"workspace.yml": "name: B\nslug: ws-b\n"})
        link(a, b, b.url, folder)  # direct; the drain goes through the proxy
        time.sleep(2.0)  # connectors start, warm pools fill
        for _ in range(20):  # warm-up
            a.client.post(EXECUTIONS, json={"flow": "seed", "remote": "to-b", "wait": 30})
        trips = []
        for _ in range(round_trips):
            start = time.perf_counter()
            record = a.client.post(
                EXECUTIONS, json={"flow": "seed", "remote": "to-b", "wait": 30}
            ).json()
            trips.append((time.perf_counter() - start) * 1000)
            assert record["status"] == "success", record
        done = 20 + round_trips
        start = time.perf_counter()
        submit(a.client, runs)
        elapsed = wait_ended(url_a, done + runs, 300)
        rate = runs / elapsed
        done += runs
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
        "p50_ms": percentile(trips, 50),
        "p99_ms": percentile(trips, 99),
        "rate": rate,
        "queued_messages": queued,
        "drain_s": delivered,
        "complete_s": completed,
        "lost": total - a_counts.get("success", 0),
        "duplicated": sum(b_counts.values()) - total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs (a smoke test)")
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], action="append")
    args = parser.parse_args()
    sizes = (50, 200, 1000) if args.quick else (200, 1000, 10_000)
    backends = args.backend or (["sqlite", "postgresql"] if postgres_url() else ["sqlite"])
    for backend in backends:
        figures = run_backend(backend, *sizes)
        print(f"\n== {backend}: link between two servers on loopback (immediate mode)")
        print(
            f"round trip p50 {figures['p50_ms']:.1f} ms (target <= {TARGETS['p50_ms']:.0f},"
            f" ratio {TARGETS['p50_ms'] / figures['p50_ms']:.2f}x), p99 {figures['p99_ms']:.1f} ms"
        )
        print(
            f"remote executions/s over one link ({sizes[1]} runs): {figures['rate']:.0f}"
            f" (target >= {TARGETS['rate']:.0f}, ratio {figures['rate'] / TARGETS['rate']:.2f}x)"
        )
        print(
            f"drain {figures['queued_messages']:.0f} queued messages after an outage:"
            f" delivered in {figures['drain_s']:.1f} s (target <= {TARGETS['drain_s']:.0f}),"
            f" all {sizes[2]} runs ended in A after {figures['complete_s']:.1f} s;"
            f" lost {figures['lost']:.0f}, duplicated {figures['duplicated']:.0f}"
        )


if __name__ == "__main__":
    main()
