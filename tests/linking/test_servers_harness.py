"""The two-server harness itself: separate stores, kill and restart, link cuts, HTTPS."""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.linking.servers import ProxyFactory, ServerFactory, ServerProcess, make_tls

ECHO = (
    "def handler(system, this, inputs):\n    return this.success('echoed', got=inputs.get('x'))\n"
)
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.mark.slow
def test_two_servers_run_on_separate_stores(
    two_servers: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_servers
    assert a.running and b.running and a.port != b.port
    assert a.token != b.token
    a.create_workspace("alpha", flows={"echo": ECHO}, settings={"limit": 5})
    record = a.run("alpha", "echo", {"x": 7})
    assert record["status"] == "success", (record, a.log_tail())
    assert record["output_value"] == {"got": 7}
    assert a.client.get("/api/v1/workspaces/alpha/settings/limit").json()["value"] == 5
    assert b.client.get("/api/v1/workspaces/alpha").status_code == 404
    assert b.client.get("/api/v1/workspaces").json()["items"] == []
    foreign = httpx.get(
        f"{b.url}/api/v1/workspaces", headers={"Authorization": f"Bearer {a.token}"}
    )
    assert foreign.status_code == 401  # each admin token belongs to its own store


@pytest.mark.slow
def test_kill_and_restart_keep_the_store(server_factory: ServerFactory, database_url: str) -> None:
    server = server_factory(database_url, "a").start()
    server.create_workspace("kept", flows={"echo": ECHO})
    assert server.run("kept", "echo", {"x": 1})["status"] == "success"
    assert server.process is not None
    group = [server.process.pid, *(c.pid for c in psutil.Process(server.process.pid).children())]
    assert len(group) > 1, "the worker should have started runner processes"
    server.kill()
    assert not server.running
    assert not [pid for pid in group if _alive(pid)]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/api/v1/health", timeout=2)
    port, token = server.port, server.token
    server.restart()
    assert (server.port, server.token, server.starts) == (port, token, 2)
    assert server.client.get("/api/v1/workspaces/kept").status_code == 200
    assert server.run("kept", "echo", {"x": 2})["output_value"] == {"got": 2}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Hello(BaseHTTPRequestHandler):
    """Answers every GET with 200 'hello' (HTTP/1.1, kept alive)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hello_server() -> Iterator[ThreadingHTTPServer]:
    """A plain HTTP server in this process, on a free port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_proxy_forwards_cuts_and_heals(
    hello_server: ThreadingHTTPServer, tcp_proxy: ProxyFactory
) -> None:
    proxy = tcp_proxy("127.0.0.1", hello_server.server_address[1])
    with httpx.Client(base_url=proxy.url(), timeout=5) as client:
        assert client.get("/").text == "hello"
        assert proxy.live_connections == 1  # kept alive by httpx
        proxy.cut()
        assert proxy.is_cut and proxy.live_connections == 0
        with pytest.raises(httpx.TransportError):
            client.get("/")
        with pytest.raises(httpx.TransportError):
            httpx.get(proxy.url(), timeout=5)
        assert proxy.refused >= 1
        proxy.heal()
        assert [client.get("/").text for _ in range(3)] == ["hello"] * 3
        assert proxy.live_connections == 1
    assert proxy.accepted == 2
    proxy.close()
    with pytest.raises(httpx.ConnectError):
        httpx.get(proxy.url(), timeout=5)


@SQLITE_ONLY
def test_https_server_is_trusted_only_with_the_ca(
    server_factory: ServerFactory, database_url: str, tcp_proxy: ProxyFactory, tmp_path: Path
) -> None:
    ca, cert, key = make_tls(tmp_path)
    server = server_factory(database_url, "tls", tls_cert=cert, tls_key=key, ca=ca).start()
    assert server.url.startswith("https://127.0.0.1:")
    assert server.client.get("/api/v1/health").status_code == 200
    trusted = ssl.create_default_context(cafile=str(ca))
    by_name = f"https://localhost:{server.port}/api/v1/health"
    assert httpx.get(by_name, verify=trusted).status_code == 200
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/api/v1/health")
    proxy = tcp_proxy("127.0.0.1", server.port)  # TLS passes through the proxy untouched
    assert httpx.get(f"{proxy.url('https')}/api/v1/health", verify=trusted).status_code == 200


@SQLITE_ONLY
def test_a_server_that_cannot_start_shows_its_log(
    server_factory: ServerFactory, database_url: str
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = server_factory(database_url, "busy", port=busy.getsockname()[1], token="-")
        with pytest.raises(AssertionError, match=r"(?s)exited with .*log tail:.*address"):
            server.start()


def test_environment_of_a_server(tmp_path: Path) -> None:
    server = ServerProcess(
        "sqlite:///x.db", tmp_path / "e", name="e", env={"FLOWLINK_LINK_BACKOFF_MAX": "1.5"}
    )
    env = server.env
    assert env["FLOWLINK_LINK_BACKOFF_MAX"] == "1.5"
    assert env["FLOWLINK_DATABASE_URL"] == "sqlite:///x.db"
    assert env["FLOWLINK_SECRET_KEY"] == "test-secret-key-e"
    assert (env["FLOWLINK_WARM_RUNNERS"], env["FLOWLINK_LEASE_SECONDS"]) == ("2", "5")
    assert env["FLOWLINK_POLL_INTERVAL"] == "0.2"
    assert "FLOWLINK_TEST_POSTGRES_URL" not in env
