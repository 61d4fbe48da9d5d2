"""Helpers shared by the benchmarks: start real servers, submit work, compute percentiles."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]


def percentile(values: list[float], pct: float) -> float:
    """The pct-th percentile (nearest rank) of values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def python_floor_ms(runs: int = 10) -> float:
    """Median wall time of a cold ``python -c pass``: the floor for one fresh interpreter."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_url() -> str | None:
    """The PostgreSQL URL to benchmark against, if one is reachable."""
    url = os.environ.get("FLOWLINK_BENCH_POSTGRES_URL") or os.environ.get(
        "FLOWLINK_TEST_POSTGRES_URL"
    )
    if not url:
        return None
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except psycopg.Error:
        return None
    return url


@contextmanager
def fresh_database(backend: str) -> Iterator[str]:
    """A URL of an empty store of the given backend, removed afterwards."""
    if backend == "sqlite":
        folder = tempfile.mkdtemp(prefix="flowlink-bench-")
        try:
            yield f"sqlite:///{folder}/flowlink.db"
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        return
    import psycopg

    base = postgres_url()
    assert base, "no PostgreSQL reachable"
    name = f"flowlink_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]


@dataclass
class ServerProcess:
    """A ``flowlink server`` subprocess and an authenticated client for it."""

    process: subprocess.Popen[bytes]
    url: str
    token: str
    client: httpx.Client

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        self.client.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@contextmanager
def server(
    database_url: str, port: int | None = None, log: Path | None = None, **env: str
) -> Iterator[ServerProcess]:
    """Initialize a store and run a real server process on it (on ``port`` if given).

    ``log``: a file for the server's output (else it is discarded)."""
    environ = {
        **os.environ,
        "FLOWLINK_DATABASE_URL": database_url,
        "FLOWLINK_SECRET_KEY": "bench",
        **env,
    }
    out = subprocess.run(
        [*FLOWLINK, "init", "--json", "--no-save"], env=environ, check=True, capture_output=True
    )
    token = json.loads(out.stdout)["token"]
    port = port or free_port()
    output = log.open("ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        [*FLOWLINK, "server", "--port", str(port)],
        env=environ,
        stdout=output,
        stderr=subprocess.STDOUT if log is not None else subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)
    deadline = time.monotonic() + 60
    while True:
        try:
            if client.get("/api/v1/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.1)
    running = ServerProcess(process=process, url=url, token=token, client=client)
    try:
        yield running
    finally:
        running.stop()


def apply_folder(client: httpx.Client, slug: str, files: dict[str, str]) -> None:
    """Apply a workspace given as files."""
    response = client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})
    response.raise_for_status()


def here() -> Path:
    """The bench folder."""
    return Path(__file__).parent


# --- reporting: each figure with its goal and ratio, and the floors of the same run ----------


def fork_floor_ms(runs: int = 20) -> float:
    """Median wall time to fork this warm interpreter and reap the child, which exits at once:
    the floor for a process that need not start Python afresh."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def load_note() -> str:
    """The machine's load average and cores, to print beside wall-time figures."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} (1 / 5 min) on {os.cpu_count()} cores"


@dataclass(frozen=True)
class Floors:
    """What the machine itself costs in this run, in ms: a cold interpreter, a warm fork."""

    cold_python_ms: float
    warm_fork_ms: float


def print_floors(runs: int = 10) -> Floors:
    """Measure and print this run's floors (``python -c pass``, a fork of a warm interpreter)
    with the load average; figures near a floor cannot get much lower on this machine."""
    floors = Floors(cold_python_ms=python_floor_ms(runs), warm_fork_ms=fork_floor_ms(2 * runs))
    print(
        f"floors: cold `python -c pass` {floors.cold_python_ms:.1f} ms,"
        f" fork of a warm interpreter {floors.warm_fork_ms:.2f} ms ({load_note()})",
        flush=True,
    )
    return floors


def goal_ratio(value: float, goal: float, *, at_least: bool = False) -> tuple[float, bool]:
    """The figure / goal ratio and whether the figure meets its goal (a ceiling unless
    ``at_least``)."""
    ratio = value / goal if goal else float("nan")
    return ratio, (ratio >= 1 if at_least else ratio <= 1)


def goal_note(value: float, goal: float | None, *, at_least: bool = False) -> str:
    """``ratio 0.85 to the goal of <= 1, ok``: the same ratio as ``report``, for a figure
    printed inside a longer line."""
    if goal is None:
        return "no goal"
    ratio, met = goal_ratio(value, goal, at_least=at_least)
    bound = ">=" if at_least else "<="
    return f"ratio {ratio:.2f} to the goal of {bound} {goal:g}, {'ok' if met else 'MISSED'}"


def report(
    label: str,
    value: float,
    goal: float,
    unit: str = "",
    *,
    at_least: bool = False,
    note: str = "",
) -> bool:
    """Print one figure with its goal, its ratio (figure / goal) and whether it meets the goal.

    The goal is a ceiling (ratio <= 1 meets it) unless ``at_least`` (a rate, a speed-up:
    ratio >= 1 meets it). Returns whether the figure meets its goal."""
    ratio, met = goal_ratio(value, goal, at_least=at_least)
    goal_text = f"{'>=' if at_least else '<='} {goal:g} {unit}".rstrip()
    verdict = "✓ ok" if met else "✗ MISSED"
    print(
        f"  {label:<44} {value:>10.2f} {unit:<7} goal {goal_text:<15} ratio {ratio:5.2f}"
        f"  {verdict}{f'  ({note})' if note else ''}",
        flush=True,
    )
    return met
