"""Benchmark: one controller, many sites (links, waiting clients, event streams).

A real controller server (``flowlink server``, with its worker) and a **load process** that
simulates many sites: each site is the connecting, controlled end of a real link
(reverse connect, immediate mode). It speaks the real protocol with real keys (made by
``openssl``): it signs every exchange, keeps a long poll open, verifies and validates the
controller's answers, "runs" each ``execution.start`` it receives (answering with an
``execution.update`` that ends it) and acks what it got. The sites are split between
``--load-processes`` processes (2), whose own CPU is reported beside the controller's (the
controller's CPU, threads and memory are its own process's, from /proc). Two real
``flowlink server`` processes are sites too (unless ``--no-real-site``), so the figures
include real connectors.

Figures, each against its target (ratio = measured / target; ≤ 1 meets it):

1. idle links: all sites connected, every poll held: the controller's threads, its extra
   memory per idle link, its idle CPU, and its API p99 at 50 requests/s;
2. fan-out: one remote execution started on each site in one batch: time until all were
   started on their site, until all ended back in the controller; lost and duplicated;
3. waiting clients: that many clients hold ``POST .../executions {"wait": 30}``;
   ``/api/v1/health`` p99;
4. event streams: that many SSE streams open on the controller; an emitted event reaches
   them all: delivery latency p50/p99, and the API p99 meanwhile.

Run with ``make bench`` (reduced sizes) or ``.venv/bin/python bench/scale.py --sites 1000
--waiters 200 --streams 1000``; ``--backend sqlite|postgresql|all``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import multiprocessing
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from common import (
    apply_folder,
    fresh_database,
    goal_ratio,
    load_note,
    percentile,
    postgres_url,
    report,
    server,
)
from link import counting_env, key_pair, per_unit, print_counts

from flowlink.execution_status import ExecutionStatus
from flowlink.linking import signing
from flowlink.linking.keys import fingerprint, load_private_key, load_public_keys
from flowlink.linking.messages import AckMessage, StartMessage, UpdateMessage
from flowlink.linking.protocol import envelope, parse_envelope
from flowlink.linking.service import sync_path
from flowlink.linking.transport import KEEPALIVE_EXPIRY

WS = "ctl"
ECHO = "def handler(system, this, inputs):\n    return this.success('echo', got=inputs.get('n'))\n"
SLEEP = "import time\n\ndef handler(system, this, inputs):\n    time.sleep(60)\n"
TARGETS = {
    "api_p99_ms": 50.0,
    "threads": 64.0,
    "kb_per_link": 50.0,
    "idle_cpu_pct": 5.0,
    "fanout_started_s": 5.0,
    "fanout_ended_s": 30.0,
    "health_p99_ms": 50.0,
    "sse_p50_ms": 100.0,
    "sse_p99_ms": 500.0,
}
POLL = 55.0  # the sites' long poll (s), as FLOWLINK_LINK_POLL's default; --poll
SUMMARY = (
    ("threads", "controller threads"),
    ("kb_per_link", "kB per idle link"),
    ("idle_cpu_pct", "idle CPU %"),
    ("api_p99_ms", "API p99 ms (links held)"),
    ("fanout_started_s", "fan-out all started s"),
    ("fanout_ended_s", "fan-out all ended s"),
    ("health_p99_ms", "health p99 ms (waiting clients)"),
    ("sse_p50_ms", "SSE delivery p50 ms"),
    ("sse_p99_ms", "SSE delivery p99 ms"),
)
SITES_PER_CLIENT = 20


# --- the load process: many simulated sites -------------------------------------------------


async def _site(
    client: httpx.AsyncClient,
    url: str,
    key: Any,
    trusted: dict[str, Any],
    ready: Callable[[], None],
    out: Callable[[str], None],
    exchanges: list[int],
    poll: float,
) -> None:
    """One simulated site: hold a long poll; run each start at once; report and ack."""
    updates: dict[str, dict[str, Any]] = {}  # message id -> update waiting for the ack
    acks: list[str] = []
    ran: set[str] = set()
    first = True
    while True:
        messages = list(updates.values())
        if acks:
            messages.append(AckMessage.new(ids=acks).wire())
        body = envelope(messages, None if messages or first else poll)
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        signing.sign_request(key, "POST", url, headers, content)
        try:
            response = await client.post(url, content=content, headers=headers, timeout=poll + 30)
            response.raise_for_status()
            signing.verify_response(
                trusted,
                response.status_code,
                response.headers,
                response.content,
                request_method="POST",
                request_url=url,
            )
            answer = parse_envelope(response.json())
        except Exception as error:  # a real site backs off and tries again
            out(f"error {type(error).__name__}: {error}")
            await asyncio.sleep(1.0)
            continue
        exchanges[0] += 1
        sent_acks = acks
        acks = [a for a in acks if a not in sent_acks]
        if first:
            first = False
            ready()
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        for message in answer.messages:
            if isinstance(message, AckMessage):
                for done in message.ids:
                    updates.pop(done, None)
                continue
            acks.append(message.id)
            if not isinstance(message, StartMessage):
                continue
            origin = message.origin_execution_id
            out(f"start {origin} {now:.6f}")
            if origin in ran:
                continue  # a redelivery: it runs once
            ran.add(origin)
            update = UpdateMessage.new(
                origin_execution_id=origin,
                revision=1,
                status=ExecutionStatus.SUCCESS,
                message="ran on the simulated site",
                outputs={"got": message.inputs.get("n")},
                started_at=stamp,
                ended_at=stamp,
                logs=[],
            ).wire()
            updates[update["id"]] = update


def sites_main(args: argparse.Namespace) -> None:
    """One load process: the sites ``--first`` .. ``--first + --sites - 1``, on stdout."""
    key = load_private_key(Path(args.site_key).read_bytes().decode())
    trusted = {fingerprint(k): k for k in load_public_keys(Path(args.controller_pub).read_text())}
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    async def main() -> None:
        # One client per few sites: httpx's pool scans all its connections for every
        # request, which with a thousand connections in one pool costs the load process
        # more than the controller's work.
        limits = httpx.Limits(
            max_connections=None,
            max_keepalive_connections=None,
            keepalive_expiry=KEEPALIVE_EXPIRY,  # as a real site's connectors
        )
        clients = [httpx.AsyncClient(limits=limits) for _ in range(0, args.sites, SITES_PER_CLIENT)]
        count = 0

        def ready() -> None:
            nonlocal count
            count += 1
            if count == args.sites:
                out("ready")

        exchanges = [0]

        async def tick() -> None:
            while True:
                await asyncio.sleep(1.0)
                out(f"exchanges {exchanges[0]}")

        tasks = [asyncio.create_task(tick())]
        for n in range(args.sites):
            url = args.controller + sync_path(WS, f"site-{args.first + n}")
            client = clients[n // SITES_PER_CLIENT]
            site = _site(client, url, key, trusted, ready, out, exchanges, args.poll)
            tasks.append(asyncio.create_task(site))
            if n % 50 == 49:
                await asyncio.sleep(0.5 * args.load_processes)  # in waves, as sites come up
        await asyncio.gather(*tasks)

    asyncio.run(main())


# --- the driver -----------------------------------------------------------------------------


def key_file(folder: Path, name: str) -> tuple[Path, str]:
    """An RSA key made with openssl (``link.key_pair``): (private key file, public PEM)."""
    _private, public = key_pair(folder, name)
    return folder / f"{name}.pem", public


class Sites:
    """The load processes (the sites split between them) and what they report."""

    def __init__(
        self,
        controller: str,
        count: int,
        site_key: Path,
        controller_pub: Path,
        processes: int,
        poll: float,
    ):
        self.count = count
        self.ready = threading.Event()
        self.starts: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self._ready = 0
        self._exchanges: dict[int, int] = {}
        self._lock = threading.Lock()
        self.processes: list[subprocess.Popen[str]] = []
        share = -(-count // processes)
        for first in range(0, count, share):
            process = subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--sites-worker",
                    "--controller",
                    controller,
                    "--first",
                    str(first),
                    "--sites",
                    str(min(share, count - first)),
                    "--load-processes",
                    str(processes),
                    "--site-key",
                    str(site_key),
                    "--controller-pub",
                    str(controller_pub),
                    "--poll",
                    str(poll),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            self.processes.append(process)
            threading.Thread(target=self._read, args=(process,), daemon=True).start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            parts = line.split()
            with self._lock:
                if parts and parts[0] == "ready":
                    self._ready += 1
                    if self._ready == len(self.processes):
                        self.ready.set()
                elif parts and parts[0] == "start":
                    self.starts.setdefault(parts[1], []).append(float(parts[2]))
                elif parts and parts[0] == "error":
                    self.errors.append(line.strip())
                elif parts and parts[0] == "exchanges":
                    self._exchanges[process.pid] = int(parts[1])

    def exchanges(self) -> int:
        """Exchanges the sites completed so far (reported once a second)."""
        with self._lock:
            return sum(self._exchanges.values())

    def error_kinds(self, since: int = 0) -> str:
        """The most common kinds of failed exchanges since the ``since``-th."""
        kinds = collections.Counter(line.split(" for url")[0][6:70] for line in self.errors[since:])
        return ", ".join(f"{kind} ({n})" for kind, n in kinds.most_common(3))

    def cpu_seconds(self) -> float:
        """CPU time the load processes used so far (user + system)."""
        total = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.NoSuchProcess):
                times = psutil.Process(process.pid).cpu_times()
                total += times.user + times.system
        return total

    def stop(self) -> None:
        """End the load processes."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def create_links(client: httpx.Client, count: int, controller_key: Path, site_public: str) -> None:
    """The controller's ends: controlling, answering (the sites connect)."""
    private = controller_key.read_text()

    def create(n: int) -> None:
        client.post(
            f"/api/v1/workspaces/{WS}/sync_config",
            json={
                "name": f"site-{n}",
                "direction": "controlling",
                "own_private_key": private,
                "remote_public_key": site_public,
            },
        ).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create, range(count)))


def probe_api(url: str, token: str, path: str, rate: float, seconds: float) -> list[float]:
    """Latencies (ms) of GET ``path`` sent at ``rate`` per second (open loop)."""
    latencies: list[float] = []
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {token}"}

    def one(client: httpx.Client) -> None:
        began = time.perf_counter()
        client.get(path).raise_for_status()
        with lock:
            latencies.append((time.perf_counter() - began) * 1000)

    with (
        httpx.Client(base_url=url, headers=headers, timeout=60) as client,
        ThreadPoolExecutor(16) as pool,
    ):
        start = time.perf_counter()
        futures = []
        for n in range(int(rate * seconds)):
            delay = start + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            futures.append(pool.submit(one, client))
        for future in futures:
            future.result()
    return latencies


def counts(client: httpx.Client) -> dict[str, int]:
    """The controller's executions ended by status, queued and running (from /metrics)."""
    out: dict[str, int] = {}
    for line in client.get("/api/v1/metrics").text.splitlines():
        if line.startswith("flowlink_executions_ended_total{") and f'workspace="{WS}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            out[status] = out.get(status, 0) + int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("flowlink_queue_depth "):
            out["queued"] = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("flowlink_runners_busy "):
            out["running"] = int(float(line.rsplit(" ", 1)[1]))
    return out


class Usage:
    """The controller process's own CPU time, threads and memory (from /proc)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.cpu0 = self.cpu()
        self.wall0 = time.perf_counter()

    def cpu(self) -> float:
        """CPU seconds used so far (user + system)."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    def restart(self) -> None:
        """Measure from now on."""
        self.cpu0, self.wall0 = self.cpu(), time.perf_counter()

    def percent(self) -> float:
        """CPU since the last restart, in % of one core."""
        return (self.cpu() - self.cpu0) / (time.perf_counter() - self.wall0) * 100

    def line(self) -> str:
        """Threads and RSS now."""
        rss = self.process.memory_info().rss >> 20
        return f"{self.process.num_threads()} threads, {rss} MB"


def figure(name: str, value: float, target_key: str, unit: str, note: str = "") -> None:
    """One figure with its goal and ratio (``common.report``: figure / goal, ok or MISSED)."""
    report(name, value, TARGETS[target_key], unit, note=note)


def database_sessions(database_url: str) -> int:
    """PostgreSQL: how many connections to the store's database were ever opened (0 on
    SQLite)."""
    if not database_url.startswith("postgresql"):
        return 0
    import psycopg

    with psycopg.connect(database_url) as connection:
        row = connection.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def idle_links(
    ctl: Any,
    database_url: str,
    sites: int,
    folder: Path,
    figures: dict[str, Any],
    processes: int,
    poll: float,
) -> Sites:
    """Figure 1: connect the sites; measure threads, memory, idle CPU, API p99."""
    usage = Usage(ctl.process.pid)
    controller_key, controller_pub = key_file(folder, "controller")
    site_key, site_pub = key_file(folder, "site")
    (folder / "controller.pub").write_text(controller_pub)
    began = time.perf_counter()
    create_links(ctl.client, sites, controller_key, site_pub)
    print(f"  ({sites} links created in {time.perf_counter() - began:.1f} s)")
    time.sleep(2)
    rss0, before = usage.process.memory_info().rss, usage.line()
    began = time.perf_counter()
    load = Sites(ctl.url, sites, site_key, folder / "controller.pub", processes, poll)
    if not load.ready.wait(timeout=120 + sites / 10):
        load.stop()
        raise RuntimeError(f"the sites did not all connect: {load.error_kinds()}")
    print(
        f"  ({sites} sites connected in {time.perf_counter() - began:.1f} s by {processes}"
        f" load processes; {len(load.errors)} failed exchanges)"
    )
    time.sleep(figures["settle_seconds"])  # every site is now holding its long poll
    rss1, threads1 = usage.process.memory_info().rss, usage.process.num_threads()
    usage.restart()
    load_cpu0, exchanges0 = load.cpu_seconds(), load.exchanges()
    time.sleep(figures["idle_seconds"])
    cpu = usage.percent()
    renewed = load.exchanges() - exchanges0
    per_renewal = cpu * figures["idle_seconds"] * 10 / renewed if renewed else float("nan")
    load_cpu = (load.cpu_seconds() - load_cpu0) / figures["idle_seconds"] * 100
    sessions0 = database_sessions(database_url)
    api = probe_api(ctl.url, ctl.token, f"/api/v1/workspaces/{WS}/executions?limit=20", 50, 10)
    opened = database_sessions(database_url) - sessions0
    print(f"  {sites} sites holding long polls (before: {before}; {load_note()}):")
    figure("controller threads", threads1, "threads", "")
    figure("extra memory per idle link", (rss1 - rss0) / sites / 1024, "kb_per_link", "kB")
    figure(
        f"idle CPU over {figures['idle_seconds']:.0f} s",
        cpu,
        "idle_cpu_pct",
        "%",
        f"(load processes {load_cpu:.1f} %)",
    )
    if renewed:
        print(
            f"  {'controller CPU per renewed poll':<44} {per_renewal:10.2f} ms"
            f"  ({renewed} polls renewed, every {poll:.0f} s per site)"
        )
    else:
        print(f"  (no poll was renewed in the window: give --idle-seconds {poll + 5:.0f} or more)")
    figure(
        "API p99 at 50 req/s (list executions)",
        percentile(api, 99),
        "api_p99_ms",
        "ms",
        f"p50 {percentile(api, 50):.1f} ms",
    )
    if database_url.startswith("postgresql"):
        print(f"  {'PostgreSQL connections opened meanwhile':<44} {opened:10d}")
    figures.update(
        threads=threads1,
        kb_per_link=(rss1 - rss0) / sites / 1024,
        idle_cpu_pct=cpu,
        api_p99_ms=percentile(api, 99),
    )
    return load


def read_counts(path: Path | None) -> dict[str, int]:
    """The controller's counters now (``--counts``; empty without)."""
    if path is None:
        return {}
    time.sleep(0.25)  # the server writes them every 0.1 s
    return dict(json.loads(path.read_text()))


def fan_out(
    ctl: Any, load: Sites, sites: int, figures: dict[str, Any], counts_file: Path | None = None
) -> None:
    """Figure 2: one remote execution on every site, in one batch."""
    before = counts(ctl.client).get("success", 0)
    counted0 = read_counts(counts_file)
    items = [{"flow": "echo", "remote": f"site-{n}", "inputs": {"n": n}} for n in range(sites)]
    usage = Usage(ctl.process.pid)
    load_cpu0, errors0 = load.cpu_seconds(), len(load.errors)
    began = time.time()
    ids: list[str] = []
    for start in range(0, sites, 1000):
        answer = ctl.client.post(
            f"/api/v1/workspaces/{WS}/executions/batch",
            json={"executions": items[start : start + 1000]},
        )
        answer.raise_for_status()
        ids += [item["id"] for item in answer.json()["items"]]
    batch_s = time.time() - began
    deadline = time.monotonic() + 120
    while sum(1 for i in ids if i in load.starts) < sites and time.monotonic() < deadline:
        time.sleep(0.05)
    started = [min(load.starts[i]) for i in ids if i in load.starts]
    started_s = max(started) - began if started else float("nan")
    while time.monotonic() < deadline:
        if counts(ctl.client).get("success", 0) - before >= sites:
            break
        time.sleep(0.1)
    ended_s = time.time() - began
    cpu_ms = (usage.cpu() - usage.cpu0) * 1000 / sites
    counted1 = read_counts(counts_file)
    load_ms = (load.cpu_seconds() - load_cpu0) * 1000 / sites
    time.sleep(1)  # a run ended twice would show now
    success = counts(ctl.client).get("success", 0) - before
    lost = sites - len(started)
    redelivered = sum(len(load.starts.get(i, [])) - 1 for i in ids if i in load.starts)
    print(f"  fan-out: {sites} remote executions, one per site ({load_note()}):")
    print(f"  {'(the batch request took)':<44} {batch_s:10.2f} s")
    figure(
        "all started on their site within",
        started_s,
        "fanout_started_s",
        "s",
        f"p50 {statistics.median([s - began for s in started]):.2f} s" if started else "",
    )
    figure(
        "all ended back in the controller within",
        ended_s,
        "fanout_ended_s",
        "s",
        f"{success}/{sites} success",
    )
    print(f"  {'controller CPU per remote run (load-free cost)':<44} {cpu_ms:10.2f} ms")
    print(f"  {'load processes CPU per remote run':<44} {load_ms:10.2f} ms")
    print(
        f"  {'lost / duplicated (ended twice)':<44} {lost} / {max(0, success - sites)}"
        f"  (starts redelivered and ignored: {redelivered};"
        f" failed exchanges: {len(load.errors) - errors0})"
    )
    if len(load.errors) > errors0:
        print(f"  {'(failed exchanges, most common)':<44} {load.error_kinds(errors0)}")
    if counts_file is not None:
        print_counts(
            "  controller, per remote run (from the batch until all ended back):",
            {"": per_unit((usage.cpu0, counted0), (usage.cpu(), counted1), sites)},
        )
    figures.update(fanout_started_s=started_s, fanout_ended_s=ended_s, lost=lost, success=success)


def waiting_clients(ctl: Any, waiters: int, figures: dict[str, Any]) -> None:
    """Figure 3: many clients waiting on executions; health p99."""
    headers = {"Authorization": f"Bearer {ctl.token}"}

    async def wait_all() -> list[int]:
        limits = httpx.Limits(max_connections=waiters + 10)
        async with httpx.AsyncClient(
            base_url=ctl.url, headers=headers, timeout=120, limits=limits
        ) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"/api/v1/workspaces/{WS}/executions", json={"flow": "sleep", "wait": 30}
                    )
                    for _ in range(waiters)
                )
            )
            return [a.status_code for a in answers]

    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(codes=asyncio.run(wait_all())))
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(counts(ctl.client).get(s, 0) for s in ("queued", "running")) >= waiters:
            break
        time.sleep(0.1)
    time.sleep(1)
    health = probe_api(ctl.url, ctl.token, "/api/v1/health", 20, 5)
    print(f"  {waiters} clients waiting on executions (wait=30):")
    figure(
        "/api/v1/health p99",
        percentile(health, 99),
        "health_p99_ms",
        "ms",
        f"p50 {percentile(health, 50):.1f} ms, max {max(health):.0f} ms",
    )
    figures.update(health_p99_ms=percentile(health, 99))
    for status in ("queued", "running"):
        page = ctl.client.get(
            f"/api/v1/workspaces/{WS}/executions", params={"status": status, "limit": 1000}
        ).json()
        for item in page["items"]:
            ctl.client.post(f"/api/v1/workspaces/{WS}/executions/{item['id']}/cancel")
    thread.join(90)
    codes = result.get("codes", [])
    print(f"  {'waiting clients answered after the cancel':<44} {codes.count(201)}/{waiters}")


PING = re.compile(rb'"payload":\{"n":"(\d+)"\}')


def stream_clients(url: str, token: str, streams: int, conn: Any) -> None:
    """In its own process: hold ``streams`` SSE streams on plain sockets (little client CPU,
    no GIL shared with the API probe); say "ready" once all are open, then note when each
    ``bench.ping`` arrives until told to stop, and send back ``[(n, time.time()), ...]``."""
    host, port = url.split("//", 1)[1].split(":")
    path = f"/api/v1/workspaces/{WS}/events/stream?types=bench.ping"
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    ).encode()
    arrived: list[tuple[int, float]] = []

    async def one(opened: list[int], ready: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        buffer = b""
        counted = False
        while chunk := await reader.read(65536):
            now = time.time()
            buffer += chunk
            if not counted and b"retry:" in buffer:
                counted = True
                opened[0] += 1
                if opened[0] == streams:
                    ready.set()
            *messages, buffer = buffer.split(b"\n\n")
            for message in messages:
                found = PING.search(message)
                if found:
                    arrived.append((int(found[1]), now))

    async def main() -> None:
        opened, ready = [0], asyncio.Event()
        tasks = [asyncio.create_task(one(opened, ready)) for _ in range(streams)]
        try:
            await asyncio.wait_for(ready.wait(), 240)
            conn.send("ready")
        except TimeoutError:
            conn.send(f"only {opened[0]} of {streams} streams opened")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, conn.recv)  # "stop"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(arrived)

    asyncio.run(main())


def event_streams(ctl: Any, streams: int, figures: dict[str, Any], events: int) -> None:
    """Figure 4: many SSE streams; delivery latency of emitted events.

    Two rounds of ``events`` events, one a second: the first alone (the controller's CPU per
    event to all streams), the second with 50 API requests/s going on (the API's p99).
    """
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    clients = context.Process(
        target=stream_clients, args=(ctl.url, ctl.token, streams, theirs), daemon=True
    )
    clients.start()
    if not ours.poll(300) or (answer := ours.recv()) != "ready":
        clients.kill()
        raise RuntimeError(f"the event streams did not all open: {answer}")
    emitted: dict[int, float] = {}
    process = psutil.Process(ctl.process.pid)

    def emit_round(first: int) -> float:
        """Emit ``events`` events one a second; the controller's CPU seconds meanwhile."""
        cpu0 = sum(process.cpu_times()[:2])
        for n in range(first, first + events):
            began = time.perf_counter()
            emitted[n] = time.time()
            ctl.client.post(
                f"/api/v1/workspaces/{WS}/events",
                json={"type": "bench.ping", "payload": {"n": str(n)}},
            ).raise_for_status()
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - began)))
        return float(sum(process.cpu_times()[:2]) - cpu0)

    quiet_cpu = emit_round(0)
    api: list[float] = []
    probe = threading.Thread(
        target=lambda: api.extend(probe_api(ctl.url, ctl.token, "/api/v1/health", 50, events + 1))
    )
    probe.start()
    emit_round(events)
    probe.join()
    time.sleep(1)
    ours.send("stop")
    arrived: list[tuple[int, float]] = ours.recv() if ours.poll(60) else []
    clients.join(10)
    latencies = {
        phase: [(at - emitted[n]) * 1000 for n, at in arrived if (n >= events) == phase]
        for phase in (False, True)
    }
    print(f"  {streams} open event streams, {events} events emitted alone, {events} with the API:")
    for phase, name in ((False, "alone"), (True, "with 50 API req/s")):
        got = latencies[phase]
        print(
            f"  {f'delivery p50 / p99 ({name})':<44} {percentile(got, 50):10.2f} "
            f"/ {percentile(got, 99):.2f} ms ({len(got)}/{events * streams} delivered)"
        )
    every = latencies[False] + latencies[True]
    figure("delivery p50", percentile(every, 50), "sse_p50_ms", "ms")
    figure("delivery p99", percentile(every, 99), "sse_p99_ms", "ms")
    figure("API (health) p99 meanwhile", percentile(api, 99), "health_p99_ms", "ms")
    print(
        f"  {'controller CPU per event to all streams':<44} "
        f"{quiet_cpu * 1000 / events:10.2f} ms (events alone, one a second)"
    )
    figures.update(sse_p50_ms=percentile(every, 50), sse_p99_ms=percentile(every, 99))


def real_sites(ctl: Any, folder: Path, count: int = 2) -> None:
    """Real flowlink servers as more sites, reverse-connected; one remote run through each."""
    with contextlib.ExitStack() as stack:
        sites = []
        for n in range(count):
            name = f"real-site-{n}"
            controller_key, controller_pub = key_file(folder, f"{name}-controller")
            site_key, site_pub = key_file(folder, name)
            ctl.client.post(
                f"/api/v1/workspaces/{WS}/sync_config",
                json={
                    "name": name,
                    "direction": "controlling",
                    "own_private_key": controller_key.read_text(),
                    "remote_public_key": site_pub,
                },
            ).raise_for_status()
            url = stack.enter_context(fresh_database("sqlite"))
            site = stack.enter_context(server(url, FLOWLINK_LINK_REFRESH="0.5"))
            apply_folder(site.client, "site", {"workspace.yml": "name: Site\nslug: site\n"})
            site.client.post(
                "/api/v1/workspaces/site/sync_config",
                json={
                    "name": "controller",
                    "direction": "controlled",
                    "remote_url": ctl.url + sync_path(WS, name),
                    "own_private_key": site_key.read_text(),
                    "remote_public_key": controller_pub,
                },
            ).raise_for_status()
            sites.append(name)
        began = time.perf_counter()
        with ThreadPoolExecutor(count) as pool:
            answers = list(
                pool.map(
                    lambda name: ctl.client.post(
                        f"/api/v1/workspaces/{WS}/executions",
                        json={"flow": "echo", "remote": name, "inputs": {"n": 7}, "wait": 30},
                    ).json(),
                    sites,
                )
            )
        took = time.perf_counter() - began
        statuses = ", ".join(f"{a['status']} (output {a.get('output_value')})" for a in answers)
        print(f"  {f'a remote run through each of {count} real flowlink sites':<44} {statuses}")
        print(f"  {'(both done within)':<44} {took:10.2f} s")


def run(backend: str, args: argparse.Namespace) -> dict[str, Any]:
    """All figures on one backend."""
    print(f"  ({load_note()})")
    figures: dict[str, Any] = {"idle_seconds": args.idle_seconds, "settle_seconds": args.settle}
    folder = Path(tempfile.mkdtemp(prefix="flowlink-bench-scale-"))
    print(
        f"\n== {backend}: {args.sites} sites, {args.waiters} waiting clients, "
        f"{args.streams} streams =="
    )
    log = folder / "controller.log"
    print(f"  (controller log: {log})")
    with (
        fresh_database(backend) as url,
        server(
            url,
            log=log,
            FLOWLINK_WORKER_CONCURRENCY="8",
            **counting_env(folder, "controller", args.counts),
        ) as ctl,
    ):
        apply_folder(
            ctl.client,
            WS,
            {
                "workspace.yml": f"name: Controller\nslug: {WS}\n",
                "flows/echo.py": ECHO,
                "flows/sleep.py": SLEEP,
            },
        )
        load = idle_links(ctl, url, args.sites, folder, figures, args.load_processes, args.poll)
        try:
            if "fanout" in args.parts:
                counts_file = folder / "controller.counts.json" if args.counts else None
                fan_out(ctl, load, args.sites, figures, counts_file)
            if "waiters" in args.parts:
                waiting_clients(ctl, args.waiters, figures)
            if "streams" in args.parts:
                event_streams(ctl, args.streams, figures, args.events)
            print(
                f"  {'controller threads at the end':<44} "
                f"{psutil.Process(ctl.process.pid).num_threads()}"
            )
        finally:
            load.stop()
        if args.real_site:
            real_sites(ctl, folder)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--waiters", type=int, default=200)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument(
        "--events", type=int, default=20, help="events emitted to the streams per round (20)"
    )
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (make bench)")
    parser.add_argument(
        "--load-processes", type=int, default=2, help="processes simulating the sites"
    )
    parser.add_argument("--no-real-site", dest="real_site", action="store_false")
    parser.add_argument(
        "--poll", type=float, default=POLL, help="the sites' long poll in seconds (55)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds between the sites' connecting and the idle window (give a poll's length"
        " or more to measure renewals in their steady state)",
    )
    parser.add_argument(
        "--parts",
        default="idle,fanout,waiters,streams",
        help="which figures after the idle links (comma-separated: fanout, waiters, streams)",
    )
    parser.add_argument(
        "--counts",
        action="store_true",
        help="count the controller's transactions, statements, exchanges... per remote run",
    )
    parser.add_argument("--sites-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--controller", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--site-key", help=argparse.SUPPRESS)
    parser.add_argument("--controller-pub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sites_worker:
        sites_main(args)
        return
    if args.quick:
        args.sites, args.waiters, args.streams, args.idle_seconds = 100, 100, 200, 5.0
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    if "postgresql" in backends and not postgres_url():
        print("(PostgreSQL not reachable: skipped)")
        backends.remove("postgresql")
    reports = {backend: run(backend, args) for backend in backends}
    print("\n== summary (ratio = figure / goal; ok when <= 1) ==")
    for key, name in SUMMARY:
        cells = []
        for backend, figures in reports.items():
            if key not in figures:
                continue
            ratio, met = goal_ratio(figures[key], TARGETS[key])
            verdict = "ok" if met else "MISSED"
            cells.append(f"{backend} {figures[key]:9.2f} ({ratio:5.2f} {verdict})")
        if cells:
            print(f"  {name:<34} goal <= {TARGETS[key]:<7g} " + "   ".join(cells))


if __name__ == "__main__":
    main()
