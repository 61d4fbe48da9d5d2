"""Shared fixtures: a clean store per test on SQLite and PostgreSQL, and live servers."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from flowlink import assembly
from flowlink.access.service import init_admin
from flowlink.server import RunningServer, build_server, serve
from flowlink.settings import ServerSettings
from flowlink.store import notify
from flowlink.store.engine import Store, make_engine, migrate

POSTGRES_URL = os.environ.get("FLOWLINK_TEST_POSTGRES_URL", "")
_template: dict[str, str] = {}


def _postgres_admin_url() -> str:
    return POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1)


def _postgres_reason() -> str | None:
    """Why PostgreSQL tests cannot run here, or None when they can."""
    if not POSTGRES_URL:
        return "FLOWLINK_TEST_POSTGRES_URL is not set (CI sets it; see README)"
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at FLOWLINK_TEST_POSTGRES_URL is not reachable: {exc}"
    return None


def _admin_execute(sql: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def _database_url(base: str, name: str) -> str:
    return base.rsplit("/", 1)[0] + "/" + name


def _postgres_template() -> str:
    """A migrated template database, made once per test session and copied per test."""
    if "name" not in _template:
        name = f"flowlink_tpl_{os.getpid()}"
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        _admin_execute(f'CREATE DATABASE "{name}"')
        engine = make_engine(_database_url(POSTGRES_URL, name))
        migrate(engine)
        engine.dispose()
        _template["name"] = name
    return _template["name"]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "name" in _template:
        _admin_execute(f'DROP DATABASE IF EXISTS "{_template["name"]}" WITH (FORCE)')


@contextmanager
def fresh_store_url(backend: str, directory: Path, prefix: str) -> Iterator[str]:
    """A clean, migrated, empty store URL: a new SQLite file in ``directory``, or a new
    PostgreSQL database named after ``prefix`` (skipped, with the reason, without one)."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'flowlink.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    with postgres_database(prefix) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A clean, migrated, empty store URL: a fresh SQLite file or a fresh PostgreSQL database."""
    with fresh_store_url(request.param, tmp_path, "flowlink_t") as url:
        yield url


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (a copy of the template), dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{_postgres_template()}"')
    try:
        yield _database_url(POSTGRES_URL, name)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def statements(engine: Any) -> Iterator[list[str]]:
    """The statements ``engine`` sends meanwhile, white space folded and upper-cased."""
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()).upper())

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    """A Store on a clean database."""
    s = assembly.store(database_url)
    yield s
    s.dispose()


def _port_slice() -> range:
    """The ports ``free_port`` hands out in this process.

    Below the kernel's ephemeral range, so that no outgoing connection takes a port between
    ``free_port`` and the server's bind, and split between pytest-xdist workers, so that two
    workers never hand out the same port.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            ephemeral_low = int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    low, high = 10000, max(ephemeral_low, 12000)
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    span = (high - low) // max(workers, 1)
    return range(low + index * span, low + (index + 1) * span)


_ports: dict[str, Any] = {}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now, not handed out before in this run.

    Ports come in turn from this worker's slice (see ``_port_slice``), starting at a random
    place in it (so that concurrent test runs on one machine seldom meet).
    """
    if "slice" not in _ports:
        _ports["slice"] = _port_slice()
        _ports["next"] = int.from_bytes(os.urandom(2), "big") % len(_ports["slice"])
    ports: range = _ports["slice"]
    for _ in range(len(ports)):
        port = ports[_ports["next"] % len(ports)]
        _ports["next"] += 1
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {ports}")


def make_settings(database_url: str, **overrides: object) -> ServerSettings:
    """Server settings for tests: small pool, short leases."""
    base = ServerSettings(
        database_url=database_url,
        secret_key="test-secret-key",
        warm_runners=2,
        lease_seconds=5.0,
        poll_interval=0.2,
        worker_concurrency=8,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


@dataclass
class LiveServer:
    """A real flowlink server (API + worker) listening on 127.0.0.1 in this process."""

    url: str
    token: str
    store: Store
    client: httpx.Client

    def wait_for(self, ws: str, execution_id: str, timeout: float = 30.0) -> dict[str, object]:
        """Poll until the execution ends; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}").json()
            if record["status"] in ("success", "error", "cancelled"):
                return dict(record)
            if time.monotonic() > deadline:
                raise AssertionError(f"execution did not end in {timeout}s: {record}")
            time.sleep(0.05)


SETTING_PRESETS: dict[str, dict[str, object]] = {
    "concurrency-1": {"worker_concurrency": 1, "warm_runners": 1},
    "memory-256": {"runner_memory_mb": 256},
}


@pytest.fixture
def server_settings(request: pytest.FixtureRequest, database_url: str) -> ServerSettings:
    """Settings for the live server; parametrize indirectly with a SETTING_PRESETS name."""
    preset = SETTING_PRESETS[request.param] if hasattr(request, "param") else {}
    return make_settings(database_url, **preset)


@dataclass
class StartedServer:
    """An in-process server started by ``start_live_server``, and how to stop it."""

    live: LiveServer
    running: RunningServer
    thread: threading.Thread

    def stop(self) -> None:
        """Stop as on SIGTERM (link long polls in flight end at once)."""
        self.live.client.close()
        self.running.server.handle_exit(signal.SIGTERM, None)
        self.thread.join(timeout=30)


def start_live_server(settings: ServerSettings, *, with_worker: bool = True) -> StartedServer:
    """Start a real server (API, link engine and optionally a worker) on a free port."""
    port = free_port()
    running = build_server(settings, port=port, with_worker=with_worker)
    with running.context.store.write() as session:
        credentials = init_admin(session)
    thread = threading.Thread(target=serve, args=(running,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(
        base_url=url, headers={"Authorization": f"Bearer {credentials.token}"}, timeout=60
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.get("/api/v1/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not come up")
        time.sleep(0.05)
    live = LiveServer(url=url, token=credentials.token, store=running.context.store, client=client)
    return StartedServer(live, running, thread)


@pytest.fixture
def live_server(server_settings: ServerSettings) -> Iterator[LiveServer]:
    """Start a real server on a free port and an admin token for it."""
    started = start_live_server(server_settings)
    yield started.live
    started.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def module_database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """Like ``database_url``, but one store for all the tests of a module that use it."""
    directory = tmp_path_factory.mktemp("module-store")
    with fresh_store_url(request.param, directory, "flowlink_m") as url:
        yield url


@pytest.fixture(scope="module")
def module_live_server(module_database_url: str) -> Iterator[LiveServer]:
    """One real server for all the tests of a module that use it (on each backend).

    For the many cases of a parametrized test whose requests are all refused or only read:
    each case checks what it checks on a server that other cases of its module have used
    too (a refused write, for instance, also proves that nothing was stored), and the module
    starts one server per backend instead of one per case.
    """
    started = start_live_server(make_settings(module_database_url))
    yield started.live
    started.stop()


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by Playwright, one per test module.

    Per module, not per session: Playwright's sync API keeps an event loop running in the
    main thread while it is open, which would break later tests that run their own loop.
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make test` installs the Debian chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def fire_timers_early(monkeypatch: pytest.MonkeyPatch, by: float) -> None:
    """Waits end ``by`` seconds before their timeout, as uvloop's may: it tells the time of
    the loop turn's start to the millisecond, so a timer can fire before the deadline by the
    clock."""
    wait = notify.AsyncWaiter.wait

    async def early(self: notify.AsyncWaiter, timeout: float) -> set[str]:
        return await wait(self, max(timeout - by, 0.0))

    monkeypatch.setattr(notify.AsyncWaiter, "wait", early)
