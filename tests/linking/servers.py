"""Harness for tests with real flowlink servers as separate OS processes.

``ServerProcess`` runs ``flowlink server`` on its own store (its admin token made with
``flowlink init --json``), ``TcpProxy`` stands between two servers to cut and heal a link,
and ``make_tls`` makes a private CA and a server certificate with ``openssl``.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from tests.conftest import free_port

FLOWLINK = str(Path(sys.executable).with_name("flowlink"))
ENDED = ("success", "error", "cancelled")
HEALTH = "/api/v1/health"


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a text file ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def workspace_files(
    slug: str,
    flows: Mapping[str, str] | None = None,
    settings: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The folder files of a minimal workspace: workspace.yml, flows/<name>.py, settings.yml."""
    spec: dict[str, Any] = {"name": slug, "slug": slug}
    if config:
        spec["config"] = {"value": dict(config)}
    files = {"workspace.yml": yaml.safe_dump(spec, sort_keys=False)}
    for name, script in (flows or {}).items():
        files[f"flows/{name}.py"] = script
    if settings:
        files["settings.yml"] = yaml.safe_dump(dict(settings), sort_keys=False)
    return files


class ServerProcess:
    """``flowlink server`` in its own process group on 127.0.0.1, with an admin token.

    ``workdir`` holds the log (``server.log``, appended across restarts) and is the
    process's working directory. The store must already exist and be migrated. The admin
    token comes from ``flowlink init --json`` before the first start, unless ``token`` (one
    already made on this store) is given.
    """

    def __init__(
        self,
        database_url: str,
        workdir: Path,
        *,
        name: str = "server",
        port: int | None = None,
        secret_key: str | None = None,
        env: Mapping[str, str] | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        ca: Path | None = None,
        worker: bool = True,
        startup_timeout: float = 30.0,
        token: str | None = None,
    ) -> None:
        if bool(tls_cert) != bool(tls_key):
            raise ValueError("tls_cert and tls_key go together")
        self.name = name
        self.database_url = database_url
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.secret_key = secret_key or f"test-secret-key-{name}"
        self.extra_env = dict(env or {})
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.ca = ca
        self.worker = worker
        self.startup_timeout = startup_timeout
        self.log_path = workdir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._token = token
        self._client: httpx.Client | None = None

    # --- addresses and clients ----------------------------------------------------------------

    @property
    def scheme(self) -> str:
        """``https`` when started with a certificate, else ``http``."""
        return "https" if self.tls_cert else "http"

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:41234``."""
        return f"{self.scheme}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify this server with: the test CA for HTTPS."""
        if self.scheme == "https" and self.ca is not None:
            return ssl.create_default_context(cafile=str(self.ca))
        return True

    @property
    def token(self) -> str:
        """The organization admin's API token (made on the first start)."""
        if self._token is None:
            raise RuntimeError(f"server {self.name} was never started")
        return self._token

    @property
    def client(self) -> httpx.Client:
        """An httpx client for this server with the admin token.

        Closed by ``stop``/``kill``: ask for it again after a restart rather than keeping it.
        """
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.url,
                headers={"Authorization": f"Bearer {self.token}"},
                verify=self.verify,
                timeout=30,
            )
        return self._client

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self.process is not None and self.process.poll() is None

    @property
    def env(self) -> dict[str, str]:
        """The environment of the server and ``init`` (inherited ``FLOWLINK_*`` dropped)."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLINK_")}
        return {
            **inherited,
            "PYTHONUNBUFFERED": "1",
            "FLOWLINK_CONFIG_DIR": str(self.workdir / "config"),
            "FLOWLINK_DATABASE_URL": self.database_url,
            "FLOWLINK_SECRET_KEY": self.secret_key,
            "FLOWLINK_WARM_RUNNERS": "2",
            "FLOWLINK_LEASE_SECONDS": "5",
            "FLOWLINK_POLL_INTERVAL": "0.2",
            **self.extra_env,
        }

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the server log."""
        return tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"ServerProcess({self.name!r}, {self.url}, running={self.running})"

    # --- lifecycle ------------------------------------------------------------------------------

    def init(self) -> str:
        """Run ``flowlink init --json`` on the store once; returns the admin token."""
        if self._token is None:
            done = subprocess.run(
                [FLOWLINK, "init", "--json", "--no-save"],
                env=self.env,
                cwd=self.workdir,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode != 0:
                raise AssertionError(
                    f"flowlink init for server {self.name} failed ({done.returncode}):\n"
                    f"{done.stdout}\n{done.stderr}"
                )
            self._token = str(json.loads(done.stdout)["token"])
        return self._token

    def launch(self) -> None:
        """Start the process without waiting for it to serve (see ``wait_ready``)."""
        if self.running:
            raise RuntimeError(f"server {self.name} is already running")
        self.init()
        command = [FLOWLINK, "server", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.tls_cert and self.tls_key:
            command += ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)]
        if not self.worker:
            command.append("--no-worker")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- harness: start {self.starts} of {self.name} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                command,
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float | None = None) -> None:
        """Wait until GET /api/v1/health answers 200; fails with the log's tail otherwise."""
        assert self.process is not None, "launch() first"
        limit = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        with httpx.Client(base_url=self.url, verify=self.verify, timeout=2) as probe:
            while True:
                code = self.process.poll()
                if code is not None:
                    raise AssertionError(
                        f"server {self.name} exited with {code} while starting; log tail:\n"
                        f"{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if probe.get(HEALTH).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    self.kill()
                    raise AssertionError(
                        f"server {self.name} did not answer {HEALTH} in {limit}s; log tail:\n"
                        f"{self.log_tail()}"
                    )
                time.sleep(0.05)

    def start(self, timeout: float | None = None) -> ServerProcess:
        """Start the server and wait until it is healthy."""
        self.launch()
        self.wait_ready(timeout)
        return self

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM and wait; SIGKILL what is left if it does not end in ``timeout``.

        Closes the client first (an idle TLS keep-alive connection holds up uvicorn's
        graceful shutdown); ``client`` makes a new one when asked again.
        """
        self._close_client()
        process = self.process
        if process is None:
            return
        descendants = self._descendants()
        if process.poll() is None:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)
        self._kill_all(descendants)

    def kill(self) -> None:
        """SIGKILL the process group, then any zygote or runner left (they have own sessions)."""
        self._close_client()
        if self.process is not None:
            self._kill_all(self._descendants())

    def _descendants(self) -> list[psutil.Process]:
        assert self.process is not None
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _kill_all(self, descendants: list[psutil.Process]) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        # The zygote and runners have sessions of their own: kill whatever is left of them.
        for leftover in _wait_gone(descendants, 0):
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        _wait_gone(descendants, 5)

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def restart(self, *, kill: bool = False, timeout: float | None = None) -> ServerProcess:
        """Stop (or kill) and start again on the same port and store."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop the server (teardown)."""
        self.stop()

    # --- API helpers ----------------------------------------------------------------------------

    def apply(self, slug: str, files: Mapping[str, str]) -> dict[str, Any]:
        """POST the folder files to /workspaces/{slug}/apply (a minimal workspace.yml if absent)."""
        body = dict(files)
        body.setdefault("workspace.yml", workspace_files(slug)["workspace.yml"])
        response = self.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": body})
        assert response.status_code == 200, f"apply {slug} on {self.name}: {response.text}"
        return dict(response.json())

    def create_workspace(
        self,
        slug: str,
        flows: Mapping[str, str] | None = None,
        settings: Mapping[str, Any] | None = None,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create (or update) a workspace with these flow scripts, settings and config."""
        return self.apply(slug, workspace_files(slug, flows, settings, config))

    def start_execution(
        self, ws: str, flow: str, inputs: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Start an execution of a flow; returns its record."""
        response = self.client.post(
            f"/api/v1/workspaces/{ws}/executions", json={"flow": flow, "inputs": inputs or {}}
        )
        assert response.status_code == 201, f"start {ws}/{flow} on {self.name}: {response.text}"
        return dict(response.json())

    def wait_for_execution(
        self, ws: str, execution_id: str, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll the execution until it is success, error or cancelled; returns its record."""
        deadline = time.monotonic() + timeout
        while True:
            response = self.client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}")
            assert response.status_code == 200, f"{self.name}: {response.text}"
            record = dict(response.json())
            if record["status"] in ENDED:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"execution {execution_id} on {self.name} did not end in {timeout}s: "
                    f"{record}\nlog tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def run(
        self,
        ws: str,
        flow: str,
        inputs: Mapping[str, Any] | None = None,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Start an execution and wait for its end."""
        execution = self.start_execution(ws, flow, inputs)
        return self.wait_for_execution(ws, str(execution["id"]), timeout)


ServerFactory = Callable[..., ServerProcess]
"""The ``server_factory`` fixture: ``(database_url, name="server", **ServerProcess options)``."""


def _wait_gone(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until the processes are gone or zombies; returns those still alive."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in processes if _is_alive(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_all(*servers: ServerProcess, timeout: float | None = None) -> None:
    """Start the servers side by side (init, launch, health) and wait for all of them."""
    with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
        for future in [pool.submit(server.start, timeout) for server in servers]:
            future.result()


class TcpProxy:
    """A threaded TCP proxy on 127.0.0.1 to ``target``; ``cut()`` simulates a link outage.

    While cut, live connections are closed and new ones are accepted and reset at once.
    """

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._live: set[socket.socket] = set()
        self._cut = threading.Event()
        self._closed = threading.Event()
        self.accepted = 0
        self.refused = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        """A proxy to the host and port of ``url``."""
        parsed = httpx.URL(url)
        return cls(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))

    def url(self, scheme: str = "http") -> str:
        """This proxy's base URL."""
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def is_cut(self) -> bool:
        """Whether the link is cut."""
        return self._cut.is_set()

    @property
    def live_connections(self) -> int:
        """How many connections are being forwarded right now."""
        with self._lock:
            return len(self._live) // 2

    def cut(self) -> None:
        """Close all live connections and refuse new ones until ``heal()``."""
        self._cut.set()
        self._close_live()

    def heal(self) -> None:
        """Forward new connections again."""
        self._cut.clear()

    def close(self) -> None:
        """Stop listening and close every connection."""
        self._closed.set()
        self._listener.close()
        self._thread.join(timeout=5)
        self._close_live()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _close_live(self) -> None:
        with self._lock:
            live, self._live = self._live, set()
        for sock in live:
            _reset(sock)

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                ready, _, _ = select.select([self._listener], [], [], 0.1)
                if not ready:
                    continue
                client, _ = self._listener.accept()
            except (OSError, ValueError):
                return  # listener closed
            if self._cut.is_set():
                self.refused += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                self.refused += 1
                _reset(client)
                continue
            upstream.settimeout(None)
            self.accepted += 1
            with self._lock:
                self._live.update((client, upstream))
            pair = _Pair(self, client, upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=pair.pump, args=(src, dst), daemon=True).start()

    def _forget(self, *socks: socket.socket) -> None:
        with self._lock:
            self._live.difference_update(socks)


class _Pair:
    """One proxied connection: two pumps; both sockets close when both directions end."""

    def __init__(self, proxy: TcpProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.socks = (client, upstream)
        self.lock = threading.Lock()
        self.ended = 0

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy src to dst until EOF (passed on as a half-close) or an error (reset both)."""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    break
                dst.sendall(data)
        except OSError:
            self._end(both=True)
            return
        self._end(both=False)

    def _end(self, both: bool) -> None:
        with self.lock:
            self.ended = 2 if both else self.ended + 1
            done = self.ended >= 2
        if done:
            self.proxy._forget(*self.socks)
            for sock in self.socks:
                if both:
                    _reset(sock)
                else:
                    sock.close()  # both directions ended cleanly: keep any buffered bytes


ProxyFactory = Callable[[str, int], TcpProxy]
"""The ``tcp_proxy`` fixture: ``(target_host, target_port) -> TcpProxy``."""


def _reset(sock: socket.socket) -> None:
    """Close a socket with an RST so the peer fails at once."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


def make_tls(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for IP 127.0.0.1 and DNS localhost, by openssl.

    Returns ``(ca_pem, server_cert_pem, server_key_pem)`` under ``tmp_path / "tls"``.
    """
    folder = tmp_path / "tls"
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(f"openssl {' '.join(args)} failed:\n{done.stderr}")

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(
        "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=flowlink test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    run("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    run(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext",
    )  # fmt: skip
    return folder / "ca.pem", folder / "server.pem", folder / "server.key"


_count_engines: dict[str, Any] = {}


def execution_counts(database_url: str) -> dict[str, int]:
    """Executions of a store by status, read from the store (works while its server is down)."""
    from sqlalchemy import func, select

    from flowlink.store.engine import make_engine
    from flowlink.store.models import Execution

    engine = _count_engines.get(database_url)
    if engine is None:
        engine = _count_engines[database_url] = make_engine(database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Execution.status, func.count()).group_by(Execution.status)
        ).all()
    return {str(status): int(count) for status, count in rows}
