"""Console benchmark: server time of the main pages at scale, and log line to page latency.

    .venv/bin/python bench/console.py [--executions 100000] [--events 1000000] [--requests 200]

A SQLite store gets ``--executions`` executions and ``--events`` events in one workspace by
bulk insert; a real ``flowlink server`` process then serves the executions list, an
execution page (2,000 log lines) and the activity view to a logged-in browser session
(cookies and all), timed at the client on 127.0.0.1. Then a flow writes a line with its
``time.time()`` every 50 ms while the execution page's live stream is open: the latency is
when the line arrives in the stream minus when the flow wrote it.
Targets (issue 11): pages p50 <= 50 ms, p99 <= 200 ms; log line p50 <= 100 ms, max <= 500 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import apply_folder, fresh_database, percentile, report, server
from bench.events import bulk_corpus
from flowlink.store.engine import Store
from flowlink.store.models import Execution, ExecutionLog, Workspace, new_id

SLUG = "console-bench"
STATUSES = ["success"] * 8 + ["error", "cancelled"]
TICKER = """import time
import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    for i in range(int(inputs["lines"])):
        this.log(f"tick {i} {time.time():.6f}")
        time.sleep(0.05)
    return this.success("done")
"""
PASSWORD = "bench-console-1"


def bulk_executions(database_url: str, workspace_id: str, count: int) -> str:
    """Insert ``count`` ended executions over 30 days; returns one with 2,000 log lines."""
    from sqlalchemy import insert

    store = Store(database_url)
    rng = random.Random(11)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    span = 30 * 24 * 3600
    chunk = 20_000
    last = ""
    for first in range(0, count, chunk):
        rows = []
        for i in range(first, min(count, first + chunk)):
            created = start + timedelta(seconds=span * i / count)
            last = new_id()
            rows.append(
                {
                    "id": last,
                    "workspace_id": workspace_id,
                    "flow_name": f"flow{rng.randrange(20)}",
                    "script": "def handler(system, this, inputs):\n    return this.success()\n",
                    "inputs": {"n": i},
                    "outputs": {"ok": True},
                    "status": STATUSES[rng.randrange(len(STATUSES))],
                    "created_at": created,
                    "started_at": created + timedelta(milliseconds=5),
                    "ended_at": created + timedelta(milliseconds=80),
                    "correlation_id": str(uuid.uuid4()),
                    "depth": 0,
                    "max_runtime": 3600.0,
                    "trigger": {"type": "api"},
                    "cancel_requested": False,
                }
            )
        with store.write() as session:
            session.execute(insert(Execution), rows)
    with store.write() as session:
        session.execute(
            insert(ExecutionLog),
            [
                {"execution_id": last, "created_at": start, "line": f"line {i} " + "x" * 60}
                for i in range(2000)
            ],
        )
    store.dispose()
    return last


def login(url: str, username: str) -> httpx.Client:
    """A client logged in through the console's login form."""
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    answer = client.post(
        "/login",
        data={"csrf_token": token.group(1), "username": username, "password": PASSWORD},
    )
    assert answer.status_code == 303, answer.text
    return client


def time_page(client: httpx.Client, path: str, requests: int) -> dict[str, float]:
    """p50 / p99 milliseconds of GET ``path`` (after two warm-up requests)."""
    for _ in range(2):
        client.get(path).raise_for_status()
    times = []
    for _ in range(requests):
        began = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - began) * 1000)
    return {"p50": percentile(times, 50), "p99": percentile(times, 99)}


def log_latency(server_client: httpx.Client, web: httpx.Client, lines: int) -> list[float]:
    """Milliseconds from ``this.log`` in a flow to the line in the execution page's stream."""
    started = server_client.post(
        f"/api/v1/workspaces/{SLUG}/executions", json={"flow": "ticker", "inputs": {"lines": lines}}
    )
    started.raise_for_status()
    execution = started.json()["id"]
    latencies: list[float] = []
    with web.stream("GET", f"/w/{SLUG}/executions/{execution}/live") as stream:
        event = ""
        for raw in stream.iter_lines():
            if raw.startswith("event: "):
                event = raw[7:]
            elif raw.startswith("data: ") and event == "logs":
                now = time.time()
                for item in json.loads(raw[6:]):
                    written = float(item["line"].rsplit(" ", 1)[1])
                    latencies.append((now - written) * 1000)
            elif raw.startswith("data: ") and event == "end":
                break
    return latencies


def prepare(database_url: str, args: argparse.Namespace) -> str:
    """Fill the store (unless it was kept from an earlier run); returns the logged execution."""
    store = Store(database_url)
    store.migrate()
    with store.read() as session:
        from sqlalchemy import select

        workspace_id = session.scalar(select(Workspace.id).where(Workspace.slug == SLUG))
        if workspace_id is not None:
            execution = session.scalar(
                select(ExecutionLog.execution_id).order_by(ExecutionLog.id).limit(1)
            )
            store.dispose()
            assert execution
            return str(execution)
    store.dispose()
    began = time.perf_counter()
    bulk_corpus(database_url, SLUG, args.events)
    store = Store(database_url)
    with store.read() as session:
        from sqlalchemy import select

        workspace_id = session.scalar(select(Workspace.id).where(Workspace.slug == SLUG))
    store.dispose()
    assert workspace_id
    execution = bulk_executions(database_url, workspace_id, args.executions)
    print(
        f"store: {args.executions:,} executions, {args.events:,} events"
        f" inserted in {time.perf_counter() - began:.0f} s"
    )
    return execution


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--log-lines", type=int, default=100)
    parser.add_argument(
        "--keep",
        help="Keep a copy of the generated store in this file; start from it when it exists",
    )
    args = parser.parse_args()
    with fresh_database("sqlite") as database_url:
        work = Path(database_url.removeprefix("sqlite:///"))
        kept = Path(args.keep) if args.keep else None
        if kept is not None and kept.exists():
            shutil.copyfile(kept, work)
            print(f"store: a copy of {kept}")
        execution = prepare(database_url, args)
        if kept is not None and not kept.exists():
            shutil.copyfile(work, kept)
        # No event clean-up during the timing: the generated events are older than the
        # inactive-workspace threshold, and deleting them would be a benchmark of its own.
        with server(database_url, FLOWLINK_EVENT_CLEANUP_INTERVAL="0") as running:
            apply_folder(
                running.client,
                SLUG,
                {"workspace.yml": f"name: {SLUG}\nslug: {SLUG}\n", "flows/ticker.py": TICKER},
            )
            running.client.post(
                "/api/v1/users",
                json={"username": "bench", "password": PASSWORD, "is_admin": True},
            ).raise_for_status()
            web = login(running.url, "bench")
            pages = {
                "executions list": f"/w/{SLUG}/executions",
                "executions list, status=error": f"/w/{SLUG}/executions?status=error",
                "execution page (2,000 log lines)": f"/w/{SLUG}/executions/{execution}",
                "activity view": f"/w/{SLUG}/activity",
                "activity view, types=bench.kind7": f"/w/{SLUG}/activity?types=bench.kind7",
            }
            print(f"server time over {args.requests} requests each:")
            for label, path in pages.items():
                figures = time_page(web, path, args.requests)
                report(f"{label}, p50", figures["p50"], 50, "ms")
                report(f"{label}, p99", figures["p99"], 200, "ms")
            latencies = log_latency(running.client, web, args.log_lines)
            print(f"log line -> execution page, {len(latencies)} lines:")
            report("latency p50", percentile(latencies, 50), 100, "ms")
            report(
                "latency max",
                max(latencies),
                500,
                "ms",
                note=f"p99 {percentile(latencies, 99):.0f} ms",
            )
            web.close()


if __name__ == "__main__":
    main()
