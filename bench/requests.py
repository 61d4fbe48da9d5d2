"""Benchmark: the cost of checking requests and answers (the body guard, safe JSON answers).

Measures, against a real server on SQLite:

- ``POST .../executions`` (a small JSON body: guard, strict model, one write) in requests/s;
- ``PUT .../settings/x`` with a 1 MB JSON value (the guard parses and walks it once) in ms;
- ``GET .../executions?limit=1000`` (a large answer, serialized with the repairing
  ``SafeJSONResponse``) in ms;
- the server's RSS before and after eight 100 MB bodies sent to ``/auth/login``.

Target: the 100 MB bodies must leave the RSS within 50 MB of where it was. Run with
``.venv/bin/python bench/requests.py [--seconds 5]``.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time

import httpx
import psutil

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import apply_folder, fresh_database, report, server

SEED = "def handler(system, this, inputs):\n    return this.success('ok')\n"
WORKSPACE = "name: Bench\nslug: bench\n"
RSS_TARGET = 50 * 1024 * 1024


def timed(call: object, runs: int) -> list[float]:
    """Wall times (ms) of ``runs`` calls."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
    return times


def big_login(port: int, size: int) -> bytes:
    """Announce a ``size``-byte login body, send up to that much, return the answer."""
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    chunk = b"x" * (1024 * 1024)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for _ in range(size // len(chunk)):
                sock.sendall(chunk)
        except OSError:
            pass  # refused and closed early: what the guard should do
        try:
            return sock.recv(4096)
        except OSError:
            return b""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of the POST run")
    args = parser.parse_args()
    with fresh_database("sqlite") as url, server(url) as running:
        client: httpx.Client = running.client
        apply_folder(client, "bench", {"workspace.yml": WORKSPACE, "flows/seed.py": SEED})
        base = "/api/v1/workspaces/bench"

        count = 0
        deadline = time.monotonic() + args.seconds
        started = time.perf_counter()
        while time.monotonic() < deadline:
            answer = client.post(f"{base}/executions", json={"flow": "seed", "inputs": {"n": 1}})
            assert answer.status_code == 201, answer.text
            count += 1
        rate = count / (time.perf_counter() - started)
        for _ in range(max(0, 1000 - count)):
            client.post(f"{base}/executions", json={"flow": "seed"})

        value = {"rows": [{"name": f"row {i}", "n": i, "tags": ["a", "b"]} for i in range(20000)]}
        put = timed(lambda: client.put(f"{base}/settings/big", json={"value": value}), 10)
        listed = timed(lambda: client.get(f"{base}/executions", params={"limit": 1000}), 20)

        process = psutil.Process(running.process.pid)
        rss_before = process.memory_info().rss
        port = int(str(client.base_url).rsplit(":", 1)[1].rstrip("/"))
        answers = [big_login(port, 100 * 1024 * 1024) for _ in range(8)]
        rss_after = process.memory_info().rss
        refused = sum(a.startswith(b"HTTP/1.1 413") for a in answers)

    growth = rss_after - rss_before
    print(f"POST /executions (small body):     {rate:8.1f} requests/s")
    print(f"PUT 1 MB setting (median of 10):   {statistics.median(put):8.1f} ms")
    print(f"GET 1000 executions (median of 20):{statistics.median(listed):8.1f} ms")
    print(f"8 x 100 MB login bodies:           {refused}/8 answered 413")
    rss = f"server RSS {rss_before / 2**20:.0f} MB -> {rss_after / 2**20:.0f} MB"
    report(
        "server RSS growth, 8 x 100 MB bodies", growth / 2**20, RSS_TARGET / 2**20, "MB", note=rss
    )


if __name__ == "__main__":
    main()
