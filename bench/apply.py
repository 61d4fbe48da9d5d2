"""Benchmark: applying a workspace with many settings, and a trivial run elsewhere meanwhile.

Run with ``.venv/bin/python bench/apply.py`` (``--settings 100000,2000``, the default;
``--backend sqlite|postgresql|all``). It starts a real ``flowlink server`` and, for each
number N, applies a new workspace whose ``settings.yml`` holds N settings; while that apply
runs, it starts a trivial flow in workspace ``small`` over and over (``POST .../executions``
with ``wait``), timing each run. Target: every such run ends in under 1 s. With the default
``FLOWLINK_APPLY_MAX_SETTINGS`` (2,000) the 100,000-setting apply is refused with 422.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import apply_folder, fresh_database, percentile, postgres_url, report, server

TRIVIAL = "def handler(system, this, inputs):\n    return this.success('ok')\n"
TARGET_RUN_S = 1.0


def settings_yml(count: int) -> str:
    """A settings.yml with ``count`` settings of small JSON values."""
    return "".join(f"s{n:06d}: {{n: {n}, label: value-{n}}}\n" for n in range(count))


def trivial_runs(srv: Any, latencies: list[float], done: threading.Event) -> None:
    """Start the trivial flow in ``small`` one after the other until ``done``; time each."""
    with httpx.Client(base_url=srv.url, headers=srv.client.headers, timeout=300) as c:
        while not done.is_set():
            start = time.perf_counter()
            response = c.post(
                "/api/v1/workspaces/small/executions", json={"flow": "t", "wait": 300}
            )
            response.raise_for_status()
            assert response.json()["status"] == "success", response.text
            latencies.append(time.perf_counter() - start)
            time.sleep(0.05)


def baseline(srv: Any, seconds: float) -> None:
    """The trivial runs' latency with nothing else going on (the machine's own noise)."""
    latencies: list[float] = []
    done = threading.Event()
    thread = threading.Thread(target=trivial_runs, args=(srv, latencies, done))
    thread.start()
    time.sleep(seconds)
    done.set()
    thread.join()
    print(
        f"  baseline, no apply: {len(latencies)} trivial runs in {seconds:.0f} s:"
        f" p50 {percentile(latencies, 50):.3f} s, max {max(latencies):.3f} s"
    )


def apply_during_runs(srv: Any, slug: str, count: int) -> None:
    """Apply ``count`` settings to ``slug`` while timing trivial runs in ``small``; print."""
    files = {"workspace.yml": f"name: Big\nslug: {slug}\n", "settings.yml": settings_yml(count)}
    latencies: list[float] = []
    done = threading.Event()
    thread = threading.Thread(target=trivial_runs, args=(srv, latencies, done))
    thread.start()
    start = time.perf_counter()
    response = srv.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})
    apply_s = time.perf_counter() - start
    done.set()
    thread.join()
    if response.status_code == 200:
        outcome = f"{len(response.json()['changes']['settings'])} created"
    else:
        outcome = f"refused {response.status_code}: {response.json()['error']['message'][:90]}"
    worst = max(latencies) if latencies else float("nan")
    print(
        f"  apply of {count} settings: {apply_s:.2f} s ({outcome})\n"
        f"    {len(latencies)} trivial runs in another workspace meanwhile:"
        f" p50 {percentile(latencies, 50):.3f} s, max {worst:.3f} s"
    )
    report("slowest trivial run during the apply", worst, TARGET_RUN_S, "s")
    if response.status_code == 200:
        again = time.perf_counter()
        srv.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})
        print(f"  the same apply again (nothing to create): {time.perf_counter() - again:.2f} s")


def measure(backend: str, counts: list[int]) -> None:
    """Start a server on a fresh store of ``backend`` and apply each count in turn."""
    with fresh_database(backend) as url, server(url) as srv:
        print(f"{backend}:")
        small = {"workspace.yml": "name: Small\nslug: small\n", "flows/t.py": TRIVIAL}
        apply_folder(srv.client, "small", small)
        for _ in range(3):  # warm the runners up
            srv.client.post(
                "/api/v1/workspaces/small/executions", json={"flow": "t", "wait": 30}
            ).raise_for_status()
        baseline(srv, 15.0)
        for index, count in enumerate(counts):
            apply_during_runs(srv, f"big-{index}", count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--settings",
        default="100000,2000",
        help="comma-separated numbers of settings, one apply (of a new workspace) each",
    )
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql", "all"))
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    for backend in backends:
        if backend == "postgresql" and not postgres_url():
            print(
                "postgresql: skipped (no FLOWLINK_BENCH_POSTGRES_URL / FLOWLINK_TEST_POSTGRES_URL)"
            )
            continue
        measure(backend, [int(n) for n in args.settings.split(",")])


if __name__ == "__main__":
    main()
