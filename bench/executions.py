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

import httpx
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
EXECUTIONS = "/api/v1/workspaces/bench/executions"
TARGETS = {"rate": 200.0, "p50_ms": 10.0, "children_s": 0.5, "rss_mb": 150.0}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def submit_many(client: Any, count: int, threads: int, flow: str = "seed") -> None:
    """Submit ``count`` executions with one POST each, from several client threads."""
    per_thread = [count // threads + (1 if i < count % threads else 0) for i in range(threads)]

    def work(n: int) -> None:
        with httpx.Client(base_url=client.base_url, headers=client.headers, timeout=60) as c:
            for _ in range(n):
                c.post(EXECUTIONS, json={"flow": flow}).raise_for_status()

    workers = [threading.Thread(target=work, args=(n,)) for n in per_thread]
    for w in workers:
        w.start()
    for w in workers:
        w.join()


def submit_batches(client: Any, count: int, size: int, flow: str) -> None:
    """Submit ``count`` executions in batch requests of ``size``."""
    for start in range(0, count, size):
        batch = [{"flow": flow}] * min(size, count - start)
        client.post(f"{EXECUTIONS}/batch", json={"executions": batch}).raise_for_status()


def ended_records(client: Any, flow: str, count: int, timeout: float = 300) -> list[dict[str, Any]]:
    """Wait until ``count`` executions of ``flow`` have ended; returns their records."""
    deadline = time.monotonic() + timeout
    while True:
        records: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 1000, "flow": flow}
            if cursor:
                params["before"] = cursor
            page = client.get(EXECUTIONS, params=params).json()
            records += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                break
        if len(records) >= count and all(r["ended_at"] for r in records):
            return records
        if time.monotonic() > deadline:
            raise RuntimeError(f"{flow}: not all of {count} executions ended in {timeout}s")
        time.sleep(0.05)


def latencies_ms(records: list[dict[str, Any]]) -> list[float]:
    """queue->start latency of each record, in ms."""
    return [
        (parse_time(r["started_at"]) - parse_time(r["created_at"])).total_seconds() * 1000
        for r in records
    ]


def timed_run(client: Any, flow: str, count: int, submit: Any) -> tuple[float, list[float], int]:
    """Submit with ``submit()`` and wait for all to end: rate, latencies, failures."""
    start = time.perf_counter()
    submit()
    # Poll the metrics (cheap) until all ended, then read the records once.
    deadline = time.monotonic() + 300
    while True:
        text = client.get("/api/v1/metrics").text
        queued_or_running = sum(
            int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("flowlink_executions{")
            and any(f'status="{s}"' in line for s in ("queued", "running", "waiting"))
        )
        if queued_or_running == 0:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("executions did not end in 300 s")
        time.sleep(0.01)
    elapsed = time.perf_counter() - start
    records = ended_records(client, flow, count)
    failed = sum(1 for r in records if r["status"] != "success")
    return count / elapsed, latencies_ms(records), failed


def run_backend(backend: str, count: int) -> dict[str, float]:
    """All measurements on one backend."""
    with fresh_database(backend) as url, server(url) as srv:
        files = {"workspace.yml": WORKSPACE, "flows/fibo.py": FIBO, "flows/parent.py": PARENT}
        for flow in ("seed", "seed_batch", "seed_paced", "warmup"):
            files[f"flows/{flow}.py"] = SEED
        apply_folder(srv.client, "bench", files)
        time.sleep(2.0)  # let the warm pool fill and the server settle
        process = psutil.Process(srv.process.pid)
        rss_server = process.memory_info().rss / 2**20
        children = process.children(recursive=True)
        rss_all = rss_server + sum(c.memory_info().rss for c in children) / 2**20
        for _ in range(5):
            srv.client.post(EXECUTIONS, json={"flow": "warmup", "wait": 10}).raise_for_status()

        rate, saturated, failed = timed_run(
            srv.client, "seed", count, lambda: submit_many(srv.client, count, threads=8)
        )
        batch_rate, _, batch_failed = timed_run(
            srv.client,
            "seed_batch",
            count,
            lambda: submit_batches(srv.client, count, 100, "seed_batch"),
        )
        # queue->start latency with capacity to spare: one submission every 10 ms.
        paced_count = 200

        def paced() -> None:
            for _ in range(paced_count):
                srv.client.post(EXECUTIONS, json={"flow": "seed_paced"}).raise_for_status()
                time.sleep(0.01)

        _, paced_latencies, _ = timed_run(srv.client, "seed_paced", paced_count, paced)
        # Windmill's shape: one parent, 40 sequential children computing fibo(10).
        child_times = []
        for _ in range(3):
            t0 = time.perf_counter()
            parent = srv.client.post(
                EXECUTIONS, json={"flow": "parent", "inputs": {"children": 40}, "wait": 120}
            ).json()
            child_times.append(time.perf_counter() - t0)
            assert parent["status"] == "success", parent
        return {
            "rate": rate,
            "batch_rate": batch_rate,
            "failed": float(failed + batch_failed),
            "sat_p50_ms": percentile(saturated, 50),
            "sat_p99_ms": percentile(saturated, 99),
            "p50_ms": percentile(paced_latencies, 50),
            "p99_ms": percentile(paced_latencies, 99),
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
            f"  {args.count} trivial executions, one POST each (8 clients):"
            f" {r['rate']:.0f} executions/s ({r['rate'] / TARGETS['rate']:.2f}x the"
            f" {TARGETS['rate']:.0f}/s target)"
        )
        print(
            f"  {args.count} trivial executions, POST .../executions/batch of 100:"
            f" {r['batch_rate']:.0f} executions/s ({r['batch_rate'] / TARGETS['rate']:.2f}x);"
            f" failed {r['failed']:.0f}"
        )
        print(
            f"  queue->start latency at 100 submissions/s: p50 {r['p50_ms']:.1f} ms"
            f" (target <= {TARGETS['p50_ms']:.0f}), p99 {r['p99_ms']:.1f} ms;"
            f" saturated (all {args.count} at once): p50 {r['sat_p50_ms']:.0f} ms,"
            f" p99 {r['sat_p99_ms']:.0f} ms"
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
