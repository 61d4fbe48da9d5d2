"""Benchmark: the permission check on the hot path.

Requests/s of ``GET /api/v1/workspaces/{ws}/executions/{id}`` with the organization admin's
token and with the token of a user whose custom role has 20 rules (the matching rule last,
with a condition). Target: admin/custom ratio <= 1.1. Run with ``make bench`` or
``.venv/bin/python bench/access.py``; PostgreSQL is included when reachable.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import httpx

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import FLOWLINK, apply_folder, fresh_database, postgres_url, report, server

TARGET_RATIO = 1.1
PASSWORD = "bench-password-1"
SUBJECTS = ["flows", "settings", "events", "automations", "pages", "apps", "tokens"]


def custom_role_yaml() -> str:
    """A role of 20 rules; only the last one allows reading the benchmark's executions."""
    rules = []
    for i in range(19):
        subject = SUBJECTS[i % len(SUBJECTS)]
        key = {"settings": "setting", "events": "type", "tokens": "role"}.get(subject, "name")
        action, pattern = ("read" if i % 2 else "update"), f"nothing-{i}-*"
        if subject == "tokens":  # lets the user create the benchmark's token
            action, pattern = "create", "twenty"
        rules.append(
            f"    - action: {action}\n      subject: {subject}\n"
            f"      conditions:\n        {key}: {pattern}\n"
        )
    rules.append(
        "    - action: read\n      subject: executions\n      conditions:\n        flow: seed*\n"
    )
    return "name: Bench\nslug: bench\nroles:\n  twenty:\n" + "".join(rules)


SEED = "def handler(system, this, inputs):\n    return this.success('all done')\n"


def interleaved(
    url: str, path: str, tokens: dict[str, str], seconds: float, threads: int
) -> dict[str, list[float]]:
    """Latencies per token, requests alternating between the tokens on every client thread.

    Alternating request by request gives both tokens the same machine (other load on it
    slows both alike); all answers must be 200.
    """
    latencies: dict[str, list[float]] = {name: [] for name in tokens}
    errors: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work(offset: int) -> None:
        clients = {
            name: httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
            )
            for name, token in tokens.items()
        }
        names = list(tokens)
        mine: dict[str, list[float]] = {name: [] for name in names}
        turn = offset
        try:
            while time.monotonic() < stop:
                name = names[turn % len(names)]
                turn += 1
                started = time.perf_counter()
                response = clients[name].get(path)
                mine[name].append(time.perf_counter() - started)
                if response.status_code != 200:
                    errors.append(f"{name}: {response.status_code} {response.text[:200]}")
                    return
        finally:
            for client in clients.values():
                client.close()
            with lock:
                for name, values in mine.items():
                    latencies[name].extend(values)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise RuntimeError(errors[0])
    return latencies


def custom_token(running: object, database_url: str) -> str:
    """A user who has the custom role in ``bench``, logged in, creates a token with that role."""
    environ = {**os.environ, "FLOWLINK_DATABASE_URL": database_url, "FLOWLINK_SECRET_KEY": "bench"}
    subprocess.run(
        [*FLOWLINK, "users", "create", "bencher", "--password", PASSWORD, "--role", "bench=twenty"],
        env=environ,
        check=True,
        capture_output=True,
    )
    url = running.url  # type: ignore[attr-defined]
    with httpx.Client(base_url=url, timeout=30) as browser:
        login = browser.post(
            "/api/v1/auth/login", json={"username": "bencher", "password": PASSWORD}
        )
        login.raise_for_status()
        created = browser.post(
            "/api/v1/tokens",
            json={"name": "bench", "workspace": "bench", "role": "twenty"},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        created.raise_for_status()
        token: str = created.json()["token"]
        return token


def bench_backend(backend: str, seconds: float, threads: int) -> float:
    with fresh_database(backend) as database_url, server(database_url) as running:
        apply_folder(
            running.client, "bench", {"workspace.yml": custom_role_yaml(), "flows/seed.py": SEED}
        )
        execution = running.client.post(
            "/api/v1/workspaces/bench/executions", json={"flow": "seed", "wait": 30}
        ).json()
        path = f"/api/v1/workspaces/bench/executions/{execution['id']}"
        twenty = custom_token(running, database_url)
        tokens = {"admin": running.token, "custom": twenty}
        interleaved(running.url, path, tokens, 1.0, threads)  # warm up
        latencies = interleaved(running.url, path, tokens, seconds, threads)
        # requests/s of each token: requests served per second of that token's own time
        admin = threads * len(latencies["admin"]) / sum(latencies["admin"])
        custom = threads * len(latencies["custom"]) / sum(latencies["custom"])
        ratio = admin / custom
        p50 = {name: 1000 * statistics.median(values) for name, values in latencies.items()}
        print(
            f"\n== {backend} ==  ({len(latencies['admin'])} + {len(latencies['custom'])} requests)"
        )
        print(f"  admin token:           {admin:8.0f} req/s  (p50 {p50['admin']:.2f} ms)")
        print(f"  custom role, 20 rules: {custom:8.0f} req/s  (p50 {p50['custom']:.2f} ms)")
        report("req/s ratio admin / custom role", ratio, TARGET_RATIO)
        return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "all"], default="all")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of the measurement")
    parser.add_argument("--threads", type=int, default=4, help="client threads")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "all" else [args.backend]
    worst = 0.0
    for backend in backends:
        if backend == "postgresql" and postgres_url() is None:
            print("postgresql: skipped (set FLOWLINK_BENCH_POSTGRES_URL)")
            continue
        worst = max(worst, bench_backend(backend, args.seconds, args.threads))
    if worst > TARGET_RATIO:
        sys.exit(1)


if __name__ == "__main__":
    main()
