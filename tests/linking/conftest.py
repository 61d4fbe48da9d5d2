"""Keys made by the real tools users have: ``openssl`` and ``ssh-keygen``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

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


# --- two real servers as separate processes (see tests/linking/servers.py) --------------------

# Imported here, not at the top, to keep this section appended as one block.
from collections.abc import Iterator  # noqa: E402
from typing import Any  # noqa: E402

from flowlink.store.engine import make_engine, migrate  # noqa: E402
from tests.conftest import (  # noqa: E402
    StartedServer,
    make_settings,
    postgres_database,
    start_live_server,
)
from tests.linking.servers import (  # noqa: E402
    ProxyFactory,
    ServerFactory,
    ServerProcess,
    TcpProxy,
    start_all,
)


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
