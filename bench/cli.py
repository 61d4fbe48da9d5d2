"""Benchmark: how fast the ``flowlink`` command answers.

    .venv/bin/python bench/cli.py [--runs 20]

Runs the installed ``flowlink`` console script ``--runs`` times each for ``flowlink --help``
and for ``flowlink executions list`` against a real ``flowlink server`` process (a fresh
SQLite store, a workspace with a few executions), and prints the median and p90 wall time
against the goal of 0.3 s, with the CPU time per run (user + system, less sensitive to the
machine's load) and this run's floors: a cold ``python -c pass`` is what any Python command
costs at least. Exits 1 when a median misses the goal.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (
    FLOWLINK,
    apply_folder,
    fresh_database,
    load_note,
    percentile,
    print_floors,
    report,
    server,
)

GOAL_S = 0.3
FLOW = "def handler(system, this, inputs):\n    return this.success('ok')\n"


def command() -> list[str]:
    """The ``flowlink`` console script next to this interpreter (what a user runs), else
    ``python -m flowlink.cli.main``."""
    script = Path(sys.executable).parent / "flowlink"
    return [str(script)] if script.exists() else FLOWLINK


def timed_runs(args: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Run ``args`` ``runs`` times (after one warm-up run): wall and CPU seconds of each."""
    subprocess.run(args, env=env, check=True, capture_output=True)
    walls, cpus = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return walls, cpus


def report_runs(label: str, walls: list[float], cpus: list[float]) -> bool:
    """Print the median and p90 wall time of a command against the goal, CPU as a note."""
    cpu = statistics.median(cpus)
    met = report(f"{label}, median", statistics.median(walls), GOAL_S, "s", note=f"CPU {cpu:.3f} s")
    report(f"{label}, p90", percentile(walls, 90), GOAL_S, "s")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs of each command")
    args = parser.parse_args()
    flowlink = command()
    env = {**os.environ, "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config"}
    print(f"== CLI start-up: {' '.join(flowlink)}, {args.runs} runs each ==")
    print_floors()
    _, floor_cpus = timed_runs([sys.executable, "-c", "pass"], args.runs, env)
    print(f"  (CPU of a cold `python -c pass`: {statistics.median(floor_cpus):.3f} s)")
    help_runs = timed_runs([*flowlink, "--help"], args.runs, env)
    with fresh_database("sqlite") as database_url, server(database_url) as running:
        files = {"workspace.yml": "name: Bench\nslug: bench\n", "flows/ok.py": FLOW}
        apply_folder(running.client, "bench", files)
        for _ in range(20):
            running.client.post(
                "/api/v1/workspaces/bench/executions", json={"flow": "ok", "wait": 30}
            ).raise_for_status()
        env.update({"FLOWLINK_SERVER": running.url, "FLOWLINK_TOKEN": running.token})
        list_runs = timed_runs([*flowlink, "executions", "list", "bench"], args.runs, env)
    met = report_runs("flowlink --help", *help_runs)
    met = report_runs("flowlink executions list (20 rows)", *list_runs) and met
    print(f"  ({load_note()})")
    if not met:
        sys.exit(1)


if __name__ == "__main__":
    main()
