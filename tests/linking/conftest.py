"""Keys made by the real tools users have: ``openssl`` and ``ssh-keygen``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowlink.linking import keys
from flowlink.store.engine import make_engine, migrate
from tests.conftest import (
    LiveServer,
    StartedServer,
    make_settings,
    postgres_database,
    start_live_server,
)
from tests.linking.servers import (
    ProxyFactory,
    ServerFactory,
    ServerProcess,
    TcpProxy,
    start_all,
)

KeyMaker = Callable[[str], Path]


@pytest.fixture(scope="session")
def make_key(tmp_path_factory: pytest.TempPathFactory) -> KeyMaker:
    """Make a private key file with a named recipe; cached per session."""
    folder = tmp_path_factory.mktemp("keys")
    made: dict[str, Path] = {}
    recipes: dict[str, list[list[str]]] = {
        "openssl-genrsa": [["openssl", "genrsa", "-traditional", "-out", "{f}", "2048"]],
        "openssl-genpkey": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "{f}",
            ]
        ],
        "ssh-keygen-pem": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", "{f}"]
        ],
        "ssh-keygen-openssh": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", "{f}"]
        ],
        "ssh-keygen-ed25519": [["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "{f}"]],
        "openssl-ec": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "{f}",
            ]
        ],
        "openssl-1024": [["openssl", "genrsa", "-traditional", "-out", "{f}", "1024"]],
        "openssl-encrypted": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-aes-256-cbc",
                "-pass",
                "pass:secret",
                "-out",
                "{f}",
            ]
        ],
        "ssh-keygen-encrypted": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "pw", "-f", "{f}"]
        ],
    }

    def make(recipe: str) -> Path:
        if recipe not in made:
            path = folder / recipe
            for command in recipes[recipe]:
                subprocess.run(
                    [part.format(f=path) for part in command], check=True, capture_output=True
                )
            made[recipe] = path
        return made[recipe]

    return make


def public_pem_of(private: Path) -> str:
    """The SPKI PEM public key of a private key file, made by openssl."""
    return subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def add_link_end(
    client: httpx.Client, ws: str, name: str, own: Path, other: Path, **fields: Any
) -> dict[str, Any]:
    """Create the sync config ``name`` of workspace ``ws`` through the API, with the private
    key file ``own`` and the public key of the other end's key file ``other``: its view."""
    created = client.post(
        f"/api/v1/workspaces/{ws}/sync_config",
        json={
            "name": name,
            "own_private_key": own.read_text(),
            "remote_public_key": public_pem_of(other),
            **fields,
        },
    )
    assert created.status_code == 201, created.text
    return dict(created.json())


def one_link(
    live: LiveServer, make_key: KeyMaker, ws: str = "ctl", **fields: Any
) -> tuple[Path, Any]:
    """Workspace ``ws`` with one answering link, ``site`` (more of its ``fields`` given): this
    end's key file, and the private key of the site, which the test plays."""
    files = {"workspace.yml": f"name: {ws}\nslug: {ws}\n"}
    assert live.client.post(f"/api/v1/workspaces/{ws}/apply", json={"files": files}).is_success
    own, site = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    add_link_end(live.client, ws, "site", own, site, **fields)
    return own, keys.load_private_key(site.read_text())


# --- two real servers as separate processes (see tests/linking/servers.py) --------------------


@pytest.fixture
def second_database_url(database_url: str, tmp_path: Path) -> Iterator[str]:
    """Another clean, migrated store of the same kind as ``database_url``."""
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'flowlink-second.db'}"
        engine = make_engine(url)
        migrate(engine)
        engine.dispose()
        yield url
        return
    with postgres_database("flowlink_t2") as url:
        yield url


@pytest.fixture
def server_factory(database_url: str, tmp_path: Path) -> Iterator[ServerFactory]:
    """Make ``ServerProcess`` objects (not started) that are stopped at teardown.

    Call as ``server_factory(url, name="a", env={...}, tls_cert=..., ...)``; the work folder
    is ``tmp_path / name``. It depends on ``database_url`` so that its servers stop before
    that store is dropped.
    """
    made: list[ServerProcess] = []

    def make(database_url: str, name: str = "server", **options: Any) -> ServerProcess:
        server = ServerProcess(database_url, tmp_path / name, name=name, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def two_servers_env() -> dict[str, str]:
    """Extra environment for both ``two_servers``; override or parametrize it in a test."""
    return {}


@pytest.fixture
def two_servers(
    server_factory: ServerFactory,
    database_url: str,
    second_database_url: str,
    two_servers_env: dict[str, str],
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B, each its own process on its own clean store, both healthy."""
    a = server_factory(database_url, "a", env=two_servers_env)
    b = server_factory(second_database_url, "b", env=two_servers_env)
    try:
        start_all(a, b)
        yield a, b
    finally:  # before the second store is dropped
        a.close()
        b.close()


@pytest.fixture
def tcp_proxy() -> Iterator[ProxyFactory]:
    """Make ``TcpProxy(host, port)`` objects that are closed at teardown."""
    made: list[TcpProxy] = []

    def make(host: str, port: int) -> TcpProxy:
        proxy = TcpProxy(host, port)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()


@pytest.fixture
def answering(database_url: str) -> Iterator[StartedServer]:
    """An in-process server that answers links (no worker)."""
    started = start_live_server(make_settings(database_url), with_worker=False)
    yield started
    started.stop()
