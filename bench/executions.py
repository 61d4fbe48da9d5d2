"""Benchmark: execution throughput, queue-to-start latency, nested children, idle memory.

Run with ``make bench`` (or ``.venv/bin/python bench/executions.py``). PostgreSQL is included
when ``FLOWLINK_BENCH_POSTGRES_URL`` or ``FLOWLINK_TEST_POSTGRES_URL`` is reachable.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from datetime import datetime
from typing import Any

import psutil

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import (
    apply_folder,
    fresh_database,
    percentile,
    postgres_url,
    python_floor_ms,
    server,
)

SEED = """import flow_api

def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    return this.success('all done')
"""
FIBO = """def fibo(n):
    return n if n < 2 else fibo(n - 1) + fibo(n - 2)

def handler(system, this, inputs):
    return this.success(result=fibo(inputs.get('n', 10)))
"""
PARENT = """def handler(system, this, inputs):
    for _ in range(inputs.get('children', 40)):
        this.flow('fibo', {'n': 10})
    return this.success('done')
"""
WORKSPACE = "name: Bench\nslug: bench\n"
TARGETS = {"rate": 200.0, "p50_ms": 10.0, "children_s": 0.5, "rss_mb": 150.0}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def submit_many(client: Any, count: int, threads: int) -> list[str]:
    """Submit ``count`` executions of the seed flow from several client threads."""
    ids: list[str] = []
    lock = threading.Lock()
    per_thread = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def work(n: int) -> None:
        import httpx

        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as c:
            for _ in range(n):
                response = c.post("/api/v1/workspaces/bench/executions", json={"flow": "seed"})
                response.raise_for_status()
                with lock:
                    ids.append(response.json()["id"])

    workers = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return ids


def wait_all_ended(client: Any, count: int, timeout: float = 300) -> list[dict[str, Any]]:
    """Page through executions until ``count`` of them have ended; returns their records."""
    deadline = time.monotonic() + timeout
    while True:
        counts = client.get("/api/v1/metrics").text
        ended = sum(
            int(line.rsplit(" ", 1)[1])
            for line in counts.splitlines()
            if line.startswith("flowlink_executions{")
            and any(f'status="{s}"' in line for s in ("success", "error", "cancelled"))
        )
        if ended >= count:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {ended} of {count} executions ended in {timeout}s")
        time.sleep(0.02)
    records: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000, "flow": "seed"}
        if cursor:
            params["before"] = cursor
        page = client.get("/api/v1/workspaces/bench/executions", params=params).json()
        records += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return records


def run_backend(backend: str, count: int) -> dict[str, float]:
    """All measurements on one backend."""
    with fresh_database(backend) as url, server(url) as srv:
        apply_folder(
            srv.client,
            "bench",
            {
                "workspace.yml": WORKSPACE,
                "flows/seed.py": SEED,
                "flows/fibo.py": FIBO,
                "flows/parent.py": PARENT,
            },
        )
        time.sleep(2.0)  # let the warm pool fill and the server settle
        process = psutil.Process(srv.process.pid)
        rss_server = process.memory_info().rss / 2**20
        rss_all = (
            rss_server + sum(c.memory_info().rss for c in process.children(recursive=True)) / 2**20
        )
        # warm-up
        for _ in range(5):
            srv.client.post(
                "/api/v1/workspaces/bench/executions", json={"flow": "seed", "wait": 10}
            ).raise_for_status()
        start = time.perf_counter()
        submit_many(srv.client, count, threads=8)
        records = wait_all_ended(srv.client, count + 5)
        elapsed = time.perf_counter() - start
        records = [r for r in records if r["trigger"]["type"] == "api"][:count]
        failed = sum(1 for r in records if r["status"] != "success")
        latencies = [
            (parse_time(r["started_at"]) - parse_time(r["created_at"])).total_seconds() * 1000
            for r in records
        ]
        # Windmill's shape: one parent, 40 sequential children computing fibo(10).
        child_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            parent = srv.client.post(
                "/api/v1/workspaces/bench/executions",
                json={"flow": "parent", "inputs": {"children": 40}, "wait": 120},
            ).json()
            child_times.append(time.perf_counter() - t0)
            assert parent["status"] == "success", parent
        return {
            "rate": count / elapsed,
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "failed": float(failed),
            "children_s": min(child_times),
            "children_median_s": sorted(child_times)[1],
            "rss_mb": rss_server,
            "rss_all_mb": rss_all,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="trivial executions to submit")
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    args = parser.parse_args()
    floor = python_floor_ms()
    print(f"floor: cold `python -c pass` = {floor:.1f} ms (one fresh interpreter per execution)")
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    for backend in backends:
        if backend == "postgresql" and not postgres_url():
            print("postgresql: skipped (set FLOWLINK_BENCH_POSTGRES_URL)")
            continue
        r = run_backend(backend, args.count)
        print(f"\n== {backend} ==")
        print(
            f"  {args.count} trivial executions via the API: {r['rate']:.0f} executions/s"
            f" (target >= {TARGETS['rate']:.0f}; {r['rate'] / TARGETS['rate']:.2f}x),"
            f" failed {r['failed']:.0f}"
        )
        print(
            f"  queue->start latency: p50 {r['p50_ms']:.1f} ms (target <= {TARGETS['p50_ms']:.0f}),"
            f" p99 {r['p99_ms']:.1f} ms"
        )
        print(
            f"  1 parent, 40 sequential fibo(10) children: {r['children_s']:.3f} s best,"
            f" {r['children_median_s']:.3f} s median (target <= {TARGETS['children_s']};"
            f" Windmill 2.09 s, Temporal 2.97 s)"
        )
        print(
            f"  per-execution time vs the interpreter floor: {1000 / r['rate']:.1f} ms vs"
            f" {floor:.1f} ms ({floor / (1000 / r['rate']):.1f}x better than a cold start each)"
        )
        print(
            f"  idle RSS: server {r['rss_mb']:.0f} MB (target <= {TARGETS['rss_mb']:.0f}),"
            f" with zygote and warm runners {r['rss_all_mb']:.0f} MB"
        )


if __name__ == "__main__":
    main()
