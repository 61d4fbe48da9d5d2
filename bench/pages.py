"""Benchmark: serving pages.

* a static public page (template + config, no flow): requests/s over ``--seconds`` with
  ``--threads`` client threads; target >= 500 req/s on SQLite;
* a public page whose data comes from a flow run per request: p50 latency of sequential
  requests; target <= 30 ms.

Run ``.venv/bin/python bench/pages.py [--backend sqlite|postgresql|all]``; PostgreSQL is
included when reachable. Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

import httpx

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import apply_folder, fresh_database, percentile, postgres_url, report, server

STATIC_TARGET = 500.0
FLOW_P50_TARGET_MS = 30.0
WORKSPACE = """name: Bench pages
slug: bench
config:
  value:
    TITLE: Status
"""
STATIC = """<!doctype html><title>{{ config.TITLE }}</title>
<h1>{{ config.TITLE }}</h1><ul>{% for i in range(20) %}<li>row {{ i }}</li>{% endfor %}</ul>"""
REPORT = """<h1>{{ data.total }}</h1>{% for item in data['items'] %}<p>{{ item }}</p>{% endfor %}"""
REPORT_FLOW = """def handler(system, this, inputs):
    n = int(inputs.get("n", "5"))
    this.success(total=n, items=[f"item {i}" for i in range(n)])
"""
FILES = {
    "workspace.yml": WORKSPACE,
    "flows/report.py": REPORT_FLOW,
    "pages/index.html": STATIC,
    "pages/index.yml": "access: public\n",
    "pages/report.html": REPORT,
    "pages/report.yml": "access: public\nflow: report\n",
}


def throughput(url: str, path: str, seconds: float, threads: int) -> tuple[int, float]:
    """Requests served (all 200) by ``threads`` keep-alive clients in ``seconds``."""
    counts = [0] * threads
    errors: list[str] = []
    stop = time.monotonic() + seconds

    def work(index: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while time.monotonic() < stop:
                response = client.get(path)
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text[:200]}")
                    return
                counts[index] += 1

    started = time.monotonic()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise RuntimeError(errors[0])
    return sum(counts), elapsed


def latencies(url: str, path: str, count: int) -> list[float]:
    """Milliseconds of ``count`` sequential requests (all 200)."""
    values = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(path)
            values.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"{response.status_code} {response.text[:200]}")
    return values


def bench_backend(backend: str, seconds: float, threads: int, flow_requests: int) -> bool:
    with fresh_database(backend) as database_url, server(database_url) as running:
        apply_folder(running.client, "bench", FILES)
        throughput(running.url, "/pages/bench/", 1.0, threads)  # warm up
        served, elapsed = throughput(running.url, "/pages/bench/", seconds, threads)
        rate = served / elapsed
        latencies(running.url, "/pages/bench/report", 10)  # warm runners
        flow = latencies(running.url, "/pages/bench/report", flow_requests)
        p50, p95 = statistics.median(flow), percentile(flow, 95)
        print(f"\n== {backend} ==")
        static_note = f"{served} in {elapsed:.1f} s, {threads} threads"
        if backend == "sqlite":
            static_ok = report(
                "static page", rate, STATIC_TARGET, "req/s", at_least=True, note=static_note
            )
        else:
            static_ok = True  # the goal is SQLite's
            print(f"  static page: {rate:.0f} req/s ({static_note}; the goal is on sqlite)")
        flow_note = f"p95 {p95:.1f} ms, {flow_requests} requests"
        flow_ok = report("flow page, p50", p50, FLOW_P50_TARGET_MS, "ms", note=flow_note)
        return static_ok and flow_ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=10.0, help="static page measurement")
    parser.add_argument("--threads", type=int, default=4, help="client threads (static page)")
    parser.add_argument("--flow-requests", type=int, default=200, help="flow page requests")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    ok = True
    for backend in backends:
        if backend == "postgresql" and postgres_url() is None:
            print("postgresql: skipped (set FLOWLINK_BENCH_POSTGRES_URL)")
            continue
        ok = bench_backend(backend, args.seconds, args.threads, args.flow_requests) and ok
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
