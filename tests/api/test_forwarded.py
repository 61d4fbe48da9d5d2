"""Forwarded headers from trusted proxies only, and the login throttle, on real servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flowlink.api.proxies import ForwardedHeaders
from flowlink.settings import ServerSettings
from flowlink.store.models import Event
from tests.access.helpers import PASSWORD, make_user, user_with_token
from tests.conftest import LiveServer, make_settings, start_live_server

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def behind_proxy(database_url: str) -> Iterator[LiveServer]:
    """A server that trusts 127.0.0.1 as its reverse proxy."""
    started = start_live_server(make_settings(database_url, trusted_proxies=("127.0.0.1/32",)))
    yield started.live
    started.stop()


def login(server: LiveServer, username: str, password: str, forwarded: str | None) -> int:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.post(
            "/api/v1/auth/login",
            json={"username": username, "password": password},
            headers=headers,
        )
    if response.status_code == 429:
        assert int(response.headers["Retry-After"]) >= 1
    return response.status_code


def denied_ip(server: LiveServer, forwarded: str) -> Any:
    """Make a denied request with X-Forwarded-For; the address its access.denied event got."""
    server.client.post("/api/v1/workspaces", json={"slug": "fw"})
    token = user_with_token(server.store, f"v{abs(hash(forwarded))}", "fw", "viewer")
    with httpx.Client(base_url=server.url, timeout=60) as client:
        response = client.put(
            "/api/v1/workspaces/fw/settings/s",
            json={"value": 1},
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": forwarded},
        )
    assert response.status_code == 403
    with server.store.read() as session:
        event = session.scalars(
            select(Event).where(Event.type == "access.denied").order_by(Event.created_at.desc())
        ).first()
    assert event is not None
    return event.source["http"]["ip"]


def test_rotating_forwarded_for_does_not_reset_the_throttle(live_server: LiveServer) -> None:
    make_user(live_server.store, "tom")
    codes = [login(live_server, "tom", "wrong-password", f"198.51.100.{n}") for n in range(1, 6)]
    assert codes == [401] * 5
    # new addresses in the header change nothing: the right password is still refused
    assert login(live_server, "tom", PASSWORD, "198.51.100.77") == 429
    assert login(live_server, "tom", PASSWORD, None) == 429
    # spoofed addresses do not reach events either
    assert denied_ip(live_server, "203.0.113.300") == "127.0.0.1"
    assert denied_ip(live_server, "203.0.113.7") == "127.0.0.1"


@pytest.mark.slow
def test_one_address_trying_many_accounts_is_locked(live_server: LiveServer) -> None:
    make_user(live_server.store, "una")
    for n in range(20):
        assert login(live_server, f"nobody-{n}", "wrong-password", f"198.51.100.{n}") == 401
    assert login(live_server, "una", PASSWORD, "198.51.100.200") == 429


def test_trusted_proxy_header_is_used(behind_proxy: LiveServer) -> None:
    server = behind_proxy
    make_user(server.store, "una")
    for n in range(20):
        assert login(server, f"nobody-{n}", "wrong-password", "198.51.100.1") == 401
    # that client address is locked, another one behind the same proxy is not
    assert login(server, "una", PASSWORD, "198.51.100.1") == 429
    assert login(server, "una", PASSWORD, "198.51.100.2") == 200
    # events get the client address the proxy saw; a malformed one is not believed
    assert denied_ip(server, "203.0.113.7") == "203.0.113.7"
    assert denied_ip(server, "203.0.113.9, 127.0.0.1") == "203.0.113.9"
    assert denied_ip(server, "203.0.113.300") == "127.0.0.1"


def test_the_account_lock_applies_across_addresses(behind_proxy: LiveServer) -> None:
    server = behind_proxy
    make_user(server.store, "tom")
    for n in range(1, 6):
        assert login(server, "tom", "wrong-password", f"198.51.100.{n}") == 401
    assert login(server, "tom", PASSWORD, "192.0.2.50") == 429
    make_user(server.store, "una")
    assert login(server, "una", PASSWORD, "192.0.2.50") == 200


def test_trusted_proxies_are_validated(database_url: str) -> None:
    env = {**os.environ, "FLOWLINK_DATABASE_URL": database_url, "FLOWLINK_SECRET_KEY": "x"}
    command = [sys.executable, "-m", "flowlink.cli.main", "server", "--port", "1"]
    bad_option = subprocess.run(
        [*command, "--trusted-proxies", "10.0.0.0/8, proxy.example"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_option.returncode == 1
    assert "'proxy.example' is not an IP address or CIDR network" in bad_option.stderr
    bad_env = subprocess.run(
        command,
        env={**env, "FLOWLINK_TRUSTED_PROXIES": "10.0.0.300"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_env.returncode == 1
    assert "FLOWLINK_TRUSTED_PROXIES" in bad_env.stderr
    parsed = ServerSettings.from_env({"FLOWLINK_TRUSTED_PROXIES": "10.1.2.3, 192.168.0.0/16, ::1"})
    assert parsed.trusted_proxies == ("10.1.2.3/32", "192.168.0.0/16", "::1/128")


@pytest.mark.parametrize(
    ("peer", "header", "client"),
    [
        ("10.0.0.5", "203.0.113.7", "203.0.113.7"),
        ("10.0.0.5", "203.0.113.7:4711", "203.0.113.7"),
        ("10.0.0.5", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.5", "198.51.100.1, 203.0.113.7, 10.0.0.9", "203.0.113.7"),
        ("10.0.0.5", "unknown, 10.0.0.9", "10.0.0.9"),
        ("10.0.0.5", "", "10.0.0.5"),
        ("192.0.2.1", "203.0.113.7", "192.0.2.1"),  # not a trusted proxy: header ignored
    ],
)
def test_forwarded_for_walk(database_url: str, peer: str, header: str, client: str) -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(client=scope["client"][0], scheme=scope["scheme"])

    middleware = ForwardedHeaders(app, ["10.0.0.0/8"])
    headers = [(b"x-forwarded-for", header.encode()), (b"x-forwarded-proto", b"https")]
    scope = {"type": "http", "client": (peer, 1234), "scheme": "http", "headers": headers}
    asyncio.run(middleware(scope, None, None))  # type: ignore[arg-type]
    assert seen["client"] == client
    assert seen["scheme"] == ("https" if peer.startswith("10.") else "http")
