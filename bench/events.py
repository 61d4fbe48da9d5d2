"""Events benchmark: batch ingest, search at scale, live delivery, emit cost vs automations.

    .venv/bin/python bench/events.py [--search-events 1000000] [--backends sqlite,postgresql]

Everything is measured through the HTTP API of a real ``flowlink server`` process, except the
setup of the large search corpus, which is bulk-inserted straight into the store.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import apply_folder, fresh_database, percentile, postgres_url, report, server
from flowlink.store.engine import Store
from flowlink.store.models import Event, Workspace, new_id

TYPES = [f"bench.kind{i}" for i in range(50)]
FLOW = "def handler(system, this, inputs):\n    return this.success('ok')\n"


def bulk_corpus(database_url: str, slug: str, count: int) -> dict[str, Any]:
    """Insert ``count`` events over 30 days into a new workspace, straight into the store."""
    store = Store(database_url)
    store.migrate()
    with store.write() as session:
        workspace = Workspace(slug=slug, name=slug, spec={}, version=1)
        session.add(workspace)
        session.flush()
        workspace_id = workspace.id
    start = datetime(2026, 1, 1, tzinfo=UTC)
    span = 30 * 24 * 3600
    correlations = [str(uuid.uuid4()) for _ in range(max(1, count // 10))]
    rng = random.Random(7)
    chunk = 20_000
    began = time.perf_counter()
    done = 0
    from sqlalchemy import insert

    while done < count:
        rows = []
        for i in range(done, min(count, done + chunk)):
            payload = {"n": i, "customer": f"c{rng.randrange(5000)}", "note": "lorem ipsum"}
            correlation = correlations[rng.randrange(len(correlations))]
            rows.append(
                {
                    "id": new_id(),
                    "workspace_id": workspace_id,
                    "type": TYPES[rng.randrange(len(TYPES))],
                    "created_at": start + timedelta(seconds=span * i / count),
                    "size": 60,
                    "source": {
                        "workspaceId": workspace_id,
                        "workspaceSlug": slug,
                        "correlationId": correlation,
                    },
                    "payload": payload,
                    "correlation_id": correlation,
                }
            )
        with store.write() as session:
            session.execute(insert(Event), rows)
        done += len(rows)
    if store.dialect == "postgresql":
        with store.engine.connect() as connection:
            connection.exec_driver_sql("ANALYZE events")
            connection.commit()
    seconds = time.perf_counter() - began
    store.dispose()
    return {"correlations": correlations, "start": start, "span": span, "seconds": seconds}


def measure_ingest(
    client: httpx.Client, slug: str, total: int, batch: int = 1000, threads: int = 2
) -> float:
    """Events per second through ``POST .../events`` in batches, ``threads`` clients at once."""
    client.post("/api/v1/workspaces", json={"slug": slug, "name": slug}).raise_for_status()
    per_thread = total // threads

    def send() -> None:
        with httpx.Client(base_url=str(client.base_url), headers=client.headers, timeout=300) as c:
            body = {
                "events": [
                    {"type": "ingest.item", "payload": {"i": i, "text": "some words here"}}
                    for i in range(batch)
                ]
            }
            for _ in range(per_thread // batch):
                c.post(f"/api/v1/workspaces/{slug}/events", json=body).raise_for_status()

    senders = [threading.Thread(target=send) for _ in range(threads)]
    began = time.perf_counter()
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    return (per_thread // batch) * batch * threads / (time.perf_counter() - began)


def measure_search(
    client: httpx.Client, slug: str, corpus: dict[str, Any], runs: int = 300
) -> dict[str, float]:
    """p50/p99 (ms) of a type + one-day window query and of a correlationId query."""
    rng = random.Random(11)
    window: list[float] = []
    correlation: list[float] = []
    for _ in range(runs):
        day = corpus["start"] + timedelta(seconds=rng.randrange(corpus["span"] - 86400))
        params = {
            "types": TYPES[rng.randrange(len(TYPES))],
            "afterDate": day.isoformat(),
            "beforeDate": (day + timedelta(days=1)).isoformat(),
            "limit": 50,
        }
        began = time.perf_counter()
        client.get(f"/api/v1/workspaces/{slug}/events", params=params).raise_for_status()
        window.append((time.perf_counter() - began) * 1000)
        params = {
            "correlationId": corpus["correlations"][rng.randrange(len(corpus["correlations"]))]
        }
        began = time.perf_counter()
        response = client.get(f"/api/v1/workspaces/{slug}/events", params=params)
        response.raise_for_status()
        correlation.append((time.perf_counter() - began) * 1000)
    return {
        "window_p50": percentile(window, 50),
        "window_p99": percentile(window, 99),
        "correlation_p50": percentile(correlation, 50),
        "correlation_p99": percentile(correlation, 99),
    }


def measure_live(client: httpx.Client, url: str, token: str, runs: int = 200) -> float:
    """p50 (ms) from just before ``POST .../events`` to the event arriving on an SSE client."""
    slug = "live-bench"
    client.post("/api/v1/workspaces", json={"slug": slug, "name": slug}).raise_for_status()
    arrived: dict[str, float] = {}
    ready = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        with (
            httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=None
            ) as c,
            c.stream("GET", f"/api/v1/workspaces/{slug}/events/stream") as response,
        ):
            ready.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    event = json.loads(line[6:])
                    if event["type"] == "live.ping":
                        arrived[event["payload"]["k"]] = time.perf_counter()
                if stop.is_set():
                    return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    time.sleep(0.5)
    latencies = []
    for i in range(runs):
        key = f"k{i}"
        began = time.perf_counter()
        client.post(
            f"/api/v1/workspaces/{slug}/events", json={"type": "live.ping", "payload": {"k": key}}
        ).raise_for_status()
        deadline = time.monotonic() + 5
        while key not in arrived and time.monotonic() < deadline:
            time.sleep(0.0005)
        if key in arrived:
            latencies.append((arrived[key] - began) * 1000)
    stop.set()
    return percentile(latencies, 50)


def _automations_yml(slug: str, count: int) -> str:
    lines = [f"name: {slug}", f"slug: {slug}", "automations:"]
    for i in range(count):
        lines += [f"  a{i}:", "    flow: noop", "    when:", f"      events: [emit.t{i}]"]
    return "\n".join(lines) + "\n"


def measure_emit_cost(client: httpx.Client, runs: int = 300) -> dict[str, float]:
    """p50 (ms) of emitting one event that one automation listens to, with 1 vs 1000 in all."""
    result = {}
    for count in (1, 1000):
        slug = f"emit-{count}"
        apply_folder(
            client, slug, {"workspace.yml": _automations_yml(slug, count), "flows/noop.py": FLOW}
        )
        times = []
        for i in range(runs):
            began = time.perf_counter()
            client.post(
                f"/api/v1/workspaces/{slug}/events", json={"type": "emit.t0", "payload": {"i": i}}
            ).raise_for_status()
            times.append((time.perf_counter() - began) * 1000)
        result[f"emit_p50_{count}"] = percentile(times, 50)
    result["ratio"] = result["emit_p50_1000"] / result["emit_p50_1"]
    return result


def run_backend(backend: str, search_events: int, ingest_events: int) -> dict[str, Any]:
    """All figures for one backend."""
    figures: dict[str, Any] = {"backend": backend}
    # SQLite has one writer: one client sending batches back to back is its best case;
    # PostgreSQL takes concurrent batches.
    threads = 1 if backend == "sqlite" else 4
    figures["ingest_clients"] = threads
    with (
        fresh_database(backend) as database_url,
        server(database_url, FLOWLINK_SCHEDULER_INTERVAL="0") as running,
    ):
        client = running.client
        time.sleep(3)  # let the server's worker finish starting its zygote and warm runners
        figures["ingest_events_per_s"] = measure_ingest(
            client, "ingest-fresh", ingest_events, threads=threads
        )
        corpus = bulk_corpus(database_url, "search-bench", search_events)
        figures["corpus_events"] = search_events
        figures["corpus_setup_s"] = corpus["seconds"]
        figures["ingest_large_events_per_s"] = measure_ingest(
            client, "ingest-large", ingest_events, threads=threads
        )
        figures.update(measure_search(client, "search-bench", corpus))
        figures["live_p50_ms"] = measure_live(client, running.url, running.token)
        figures.update(measure_emit_cost(client))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--search-events", type=int, default=1_000_000)
    parser.add_argument("--ingest-events", type=int, default=100_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        if backend == "postgresql" and not postgres_url():
            print("postgresql: skipped (set FLOWLINK_BENCH_POSTGRES_URL)")
            continue
        f = run_backend(backend, args.search_events, args.ingest_events)
        print(f"\n== {backend} ==  (corpus setup {f['corpus_setup_s']:.0f} s)")
        ingest = f"batches of 1,000, {args.ingest_events:,} events, {f['ingest_clients']} client(s)"
        if backend == "sqlite":
            report(
                "ingest, empty store",
                f["ingest_events_per_s"],
                10_000,
                "ev/s",
                at_least=True,
                note=ingest,
            )
        else:
            print(f"  ingest, empty store: {f['ingest_events_per_s']:,.0f} events/s ({ingest})")
        print(f"  ingest, corpus stored: {f['ingest_large_events_per_s']:,.0f} events/s")
        at = f"at {f['corpus_events']:,} events"
        report(
            f"search type + window, p50 {at}",
            f["window_p50"],
            20,
            "ms",
            note=f"p99 {f['window_p99']:.1f} ms",
        )
        report(
            f"search correlationId, p50 {at}",
            f["correlation_p50"],
            20,
            "ms",
            note=f"p99 {f['correlation_p99']:.1f} ms",
        )
        report("live delivery emit -> SSE, p50", f["live_p50_ms"], 50, "ms")
        emits = f"{f['emit_p50_1']:.2f} vs {f['emit_p50_1000']:.2f} ms"
        report("emit p50, 1,000 automations / 1", f["ratio"], 1.5, note=emits)


if __name__ == "__main__":
    main()
