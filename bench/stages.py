"""Where an execution's time goes: stage timestamps, transactions and thread hand-offs.

Runs a real server (API and worker) in this process on a fresh SQLite store (or PostgreSQL
with ``--backend postgresql``), wraps the hand-over points of the execution path with
timestamps, and prints the median time between consecutive stages of

- a sequential child: 1 parent starting 40 ``fibo(10)`` children one after another
  (``this.flow``), from the parent's call to the moment its wait returns;
- a trivial execution: ``POST .../executions`` (no wait), from the request to its end
  being committed.

It also counts, per execution, the store transactions (commits), SQL statements and
threads started. The wrappers add a few microseconds per stage; wall figures are as noisy
as the machine, the counts are exact.

    .venv/bin/python bench/stages.py [--backend sqlite|postgresql] [--runs 3]
"""

from __future__ import annotations

import argparse
import collections
import functools
import itertools
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from common import fresh_database, load_note, postgres_url
from executions import EXECUTIONS, FIBO, PARENT, SEED, WORKSPACE

_marks: list[tuple[float, str, str]] = []
_local = threading.local()


def _mark(label: str, key: str | None) -> None:
    _marks.append((time.perf_counter(), label, key or getattr(_local, "execution", "")))


def _wrap(
    owner: Any,
    name: str,
    enter: str | None,
    leave: str | None,
    key: Callable[..., str | None] = lambda *a, **k: None,
    key_out: Callable[[Any], str | None] | None = None,
) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        k = key(*args, **kwargs)
        if enter:
            _mark(enter, k)
        result = original(*args, **kwargs)
        if leave:
            _mark(leave, key_out(result) if key_out else k)
        return result

    setattr(owner, name, wrapper)


def instrument() -> dict[str, int]:
    """Wrap the stages of the execution path; returns live counters."""
    from flowlink.executions import calls, worker
    from flowlink.runtime import pool, session

    counts: dict[str, int] = collections.Counter()

    def execute_key(self: Any, claimed: Any, *_rest: Any) -> str:
        _local.execution = claimed.execution.id
        return str(claimed.execution.id)

    _wrap(
        calls.FlowApiCalls,
        "_start_child_now",
        "parent: start_child call",
        "parent: start_child answered",
        key_out=lambda result: str(result.get("id")),
    )
    _wrap(
        calls.FlowApiCalls,
        "_start_child",
        None,
        "child created (in its transaction)",
        key_out=lambda result: str((result[0] if isinstance(result, tuple) else result)["id"]),
    )
    _wrap(
        worker.Worker,
        "launch_reserved",
        "committed, handed to a run thread",
        None,
        key=lambda self, claimed: str(claimed.execution.id),
    )
    _wrap(worker.Worker, "_execute", "run thread started", None, key=execute_key)
    _wrap(pool.RunnerPool, "acquire", None, "runner acquired")
    _wrap(session._Driver, "run", "start message sent", "outcome known")
    _wrap(pool.Runner, "close", None, "runner gone (exit, sweep)")
    _wrap(session._Driver, "end", "end message received", "end handled (limits checked)")
    _wrap(
        worker.Worker,
        "_record_endings",
        None,
        "ending committed",
        key=lambda self, batch: ",".join(e.id for e in batch),
    )
    _wrap(
        calls.FlowApiCalls,
        "_wait",
        "parent: wait call",
        "parent: wait returns",
        key=lambda self, child_id, **_kw: child_id,
    )
    original_start = threading.Thread.start

    def start(self: threading.Thread) -> None:
        counts["threads"] += 1
        original_start(self)

    threading.Thread.start = start  # type: ignore[method-assign]
    return counts


def count_store(store: Any, counts: dict[str, int]) -> None:
    """Count commits and statements on the store's engine."""
    from sqlalchemy import event

    @event.listens_for(store.engine, "commit")
    def _commit(_conn: Any) -> None:
        counts["commits"] += 1

    @event.listens_for(store.engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:
        counts["statements"] += 1


def chains(children: set[str]) -> dict[str, list[float]]:
    """Per stage: the time since the previous stage, for each child, in ms."""
    by_key: dict[str, list[tuple[float, str]]] = collections.defaultdict(list)
    for at, label, key in _marks:
        for k in key.split(","):
            by_key[k].append((at, label))
    steps: dict[str, list[float]] = collections.defaultdict(list)
    for child in children:
        stages = sorted(by_key[child])
        for (t0, _), (t1, label) in itertools.pairwise(stages):
            steps[label].append((t1 - t0) * 1000)
    return steps


def print_steps(title: str, steps: dict[str, list[float]], order: list[str]) -> None:
    """Median ms per stage, in path order."""
    print(title)
    total = 0.0
    for label in order:
        values = steps.get(label)
        if not values:
            continue
        median = statistics.median(values)
        total += median
        print(f"  {median:7.2f} ms  -> {label}")
    print(f"  {total:7.2f} ms  total of the medians")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--runs", type=int, default=3, help="parents of 40 children")
    parser.add_argument("--trivial", type=int, default=100, help="trivial executions")
    args = parser.parse_args()
    if args.backend == "postgresql" and not postgres_url():
        sys.exit("no PostgreSQL: set FLOWLINK_BENCH_POSTGRES_URL")
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from conftest import make_settings, start_live_server

    counts = instrument()
    with fresh_database(args.backend) as url:
        started = start_live_server(make_settings(url, warm_runners=4, worker_concurrency=16))
        try:
            live = started.live
            count_store(live.store, counts)
            files = {"workspace.yml": WORKSPACE, "flows/fibo.py": FIBO, "flows/parent.py": PARENT}
            files["flows/seed.py"] = SEED
            live.client.post(
                "/api/v1/workspaces/bench/apply", json={"files": files}
            ).raise_for_status()
            time.sleep(1.0)
            for _ in range(3):
                live.client.post(EXECUTIONS, json={"flow": "seed", "wait": 10})
            print(f"{load_note()}, backend {args.backend}")

            # sequential children
            _marks.clear()
            counts.clear()
            walls = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                parent = live.client.post(
                    EXECUTIONS, json={"flow": "parent", "inputs": {"children": 40}, "wait": 60}
                ).json()
                walls.append(time.perf_counter() - t0)
                assert parent["status"] == "success", parent
            n = args.runs * 41
            ids = {key for _, label, key in _marks if label == "child created (in its transaction)"}
            print(
                f"\n{args.runs} x 1 parent + 40 sequential children: best {min(walls):.3f} s"
                f" ({min(walls) * 1000 / 40:.1f} ms per child); per execution:"
                f" {counts['commits'] / n:.1f} commits, {counts['statements'] / n:.1f}"
                f" statements, {counts['threads'] / n:.1f} threads started"
            )
            print_steps(
                "one sequential child (median ms since the previous stage):",
                chains(ids),
                [
                    "child created (in its transaction)",
                    "committed, handed to a run thread",
                    "run thread started",
                    "runner acquired",
                    "start message sent",
                    "parent: wait call",
                    "end message received",
                    "end handled (limits checked)",
                    "outcome known",
                    "runner gone (exit, sweep)",
                    "ending committed",
                    "parent: wait returns",
                    "parent: start_child answered",
                ],
            )
            calls = [at for at, label, _ in _marks if label == "parent: start_child call"]
            cycles = [(t1 - t0) * 1000 for t0, t1 in itertools.pairwise(calls) if t1 - t0 < 1]
            created = sorted(
                at for at, label, _ in _marks if label == "child created (in its transaction)"
            )
            answered = sorted(
                at for at, label, _ in _marks if label == "parent: start_child answered"
            )
            before = [min((c - t for t in calls if t <= c), default=0.0) * 1000 for c in created]
            after = [min((t - a for t in calls if t >= a), default=1.0) * 1000 for a in answered]
            after = [gap for gap in after if gap < 1000]
            if cycles and before and after:
                print(
                    f"  {statistics.median(before):7.2f} ms  parent's start_child call -> child"
                    " created (slot, write lock, checks, insert)\n"
                    f"  {statistics.median(after):7.2f} ms  start_child answered -> the parent's"
                    " next call (reply, runner, next call)\n"
                    f"  {statistics.median(cycles):7.2f} ms  from one start_child call to the"
                    " next (a whole child, as the parent sees it)"
                )

            # trivial executions, one POST each, paced so that they do not queue
            _marks.clear()
            counts.clear()
            created: list[tuple[float, str]] = []
            for _ in range(args.trivial):
                t0 = time.perf_counter()
                record = live.client.post(EXECUTIONS, json={"flow": "seed"}).json()
                created.append((t0, record["id"]))
                time.sleep(0.02)
            time.sleep(0.5)
            for t0, execution_id in created:
                _marks.append((t0, "POST sent", execution_id))
            n = args.trivial
            print(
                f"\n{n} trivial executions, one POST each, 50/s: per execution"
                f" {counts['commits'] / n:.1f} commits, {counts['statements'] / n:.1f}"
                f" statements, {counts['threads'] / n:.1f} threads started"
            )
            print_steps(
                "one trivial execution (median ms since the previous stage):",
                chains({i for _, i in created}),
                [
                    "committed, handed to a run thread",
                    "run thread started",
                    "runner acquired",
                    "start message sent",
                    "end message received",
                    "end handled (limits checked)",
                    "outcome known",
                    "runner gone (exit, sweep)",
                    "ending committed",
                ],
            )
        finally:
            started.stop()


if __name__ == "__main__":
    main()
