"""The shipped nginx configuration (deploy/nginx/flowlink.conf), run on loopback with TLS in
front of a real flowlink server: API, redirect, a live event stream, and a workspace link
whose signed requests go through the proxy."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from flowlink.linking.service import sync_path
from tests.conftest import free_port
from tests.linking.conftest import KeyMaker, public_pem_of
from tests.linking.servers import ServerFactory, ServerProcess, make_tls

SITE = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "flowlink.conf"
WORK = "def handler(system, this, inputs):\n    return this.success('ran', n=inputs.get('n'))\n"
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def nginx_binary() -> str:
    """nginx from Debian, installed here when missing (the test set-up runs as root in CI)."""
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx"):
        if candidate and os.path.exists(candidate):
            return candidate
    if os.geteuid() != 0:
        pytest.skip("nginx is not installed and installing it needs root (apt-get install nginx)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, capture_output=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "nginx-light"],
        check=True,
        capture_output=True,
        env=env,
    )
    return "/usr/sbin/nginx"


def render(site: str, *, upstream: int, http: int, https: int, cert: Path, key: Path) -> str:
    """The shipped site file with this test's ports, names and certificate; nothing else."""
    replacements = {
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream};",
        "listen 80;": f"listen 127.0.0.1:{http};",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https} ssl http2;",
        "server_name flowlink.example.com;": "server_name 127.0.0.1 localhost;",
        "/etc/ssl/flowlink/fullchain.pem": str(cert),
        "/etc/ssl/flowlink/privkey.pem": str(key),
    }
    for old, new in replacements.items():
        assert old in site, f"{SITE} no longer has {old!r}: update this test"
        site = site.replace(old, new)
    return "\n".join(line for line in site.splitlines() if "[::]" not in line) + "\n"


@dataclass
class Proxied:
    """A flowlink server behind nginx."""

    server: ServerProcess
    url: str  # https through nginx
    http_port: int  # nginx's plain HTTP port (redirects)
    ca: Path


@pytest.fixture
def nginx_in_front(
    server_factory: ServerFactory, database_url: str, tmp_path: Path
) -> Iterator[Proxied]:
    """A flowlink server with nginx (TLS, the shipped config) in front."""
    binary = nginx_binary()
    ca, cert, key = make_tls(tmp_path)
    # The proxy's X-Forwarded-Proto must be believed (as deploy/nginx/flowlink.conf says).
    server = server_factory(
        database_url, "behind", env={"FLOWLINK_TRUSTED_PROXIES": "127.0.0.1"}
    ).start()
    http_port, https_port = free_port(), free_port()
    folder = tmp_path / "nginx"
    folder.mkdir()
    site = render(
        SITE.read_text(),
        upstream=server.port,
        http=http_port,
        https=https_port,
        cert=cert,
        key=key,
    )
    (folder / "flowlink.conf").write_text(site)
    user = "user root;\n" if os.geteuid() == 0 else ""
    (folder / "nginx.conf").write_text(
        f"{user}pid {folder}/nginx.pid;\nerror_log {folder}/error.log info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  access_log {folder}/access.log;\n"
        + "".join(
            f"  {kind}_temp_path {folder}/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + f"  include {folder}/flowlink.conf;\n}}\n"
    )
    check = subprocess.run(
        [binary, "-t", "-p", str(folder), "-c", str(folder / "nginx.conf")],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
    process = subprocess.Popen(
        [binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", https_port)) == 0:
                    break
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "nginx did not listen"
            time.sleep(0.05)
        yield Proxied(server, f"https://127.0.0.1:{https_port}", http_port, ca)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.slow
@SQLITE_ONLY
def test_nginx_config_serves_flowlink_over_tls(
    nginx_in_front: Proxied,
    server_factory: ServerFactory,
    second_database_url: str,
    make_key: KeyMaker,
) -> None:
    server, url, ca = nginx_in_front.server, nginx_in_front.url, nginx_in_front.ca
    trusted = ssl.create_default_context(cafile=str(ca))
    auth = {"Authorization": f"Bearer {server.token}"}
    with httpx.Client(base_url=url, verify=trusted, headers=auth, timeout=30) as client:
        health = client.get("/api/v1/health")
        assert health.status_code == 200 and health.headers["strict-transport-security"]
        assert client.get("/api/v1/ready").json()["status"] == "ready"
        redirect = httpx.get(
            f"http://127.0.0.1:{nginx_in_front.http_port}/api/v1/health", follow_redirects=False
        )
        assert redirect.status_code == 301
        assert redirect.headers["location"].startswith("https://127.0.0.1")

        files = {"workspace.yml": "name: ws-b\nslug: ws-b\n", "flows/work.py": WORK}
        big = {f"flows/f{i}.py": WORK + "#" * 2000 for i in range(40)}  # > nginx's buffer
        applied = client.post("/api/v1/workspaces/ws-b/apply", json={"files": {**files, **big}})
        assert applied.status_code == 200, applied.text
        run = client.post(
            "/api/v1/workspaces/ws-b/executions",
            json={"flow": "work", "inputs": {"n": 1}, "wait": 30},
        )
        assert run.status_code == 201 and run.json()["status"] == "success", run.text

        # A live event stream passes through at once (proxy_buffering off).
        with client.stream("GET", "/api/v1/workspaces/ws-b/events/stream") as stream:
            assert stream.status_code == 200
            marker = f"through-nginx-{time.monotonic_ns()}"
            posted = httpx.post(
                f"{url}/api/v1/workspaces/ws-b/events",
                json={"type": "custom.proxied", "payload": {"marker": marker}},
                headers=auth,
                verify=trusted,
            )
            assert posted.status_code in (200, 201), posted.text
            began, seen = time.monotonic(), ""
            for chunk in stream.iter_text():
                seen += chunk
                if marker in seen:
                    break
                assert time.monotonic() - began < 10, "the event did not come through"
            assert time.monotonic() - began < 5

    # A linked server reaches this one through nginx: signatures cover the https URL.
    a = server_factory(second_database_url, "linker").start()
    a.create_workspace("ws-a", flows={"work": WORK})
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    with httpx.Client(base_url=url, verify=trusted, headers=auth, timeout=30) as client:
        made = client.post("/api/v1/workspaces/ws-b/sync_config", json={
            "name": "from-a", "own_private_key": key_b.read_text(),
            "remote_public_key": public_pem_of(key_a),
        })  # fmt: skip
        assert made.status_code == 201, made.text
    made = a.client.post("/api/v1/workspaces/ws-a/sync_config", json={
        "name": "to-b", "own_private_key": key_a.read_text(),
        "remote_public_key": public_pem_of(key_b),
        "remote_url": url + sync_path("ws-b", "from-a"),
        "ca_certificate": ca.read_text(),
    })  # fmt: skip
    assert made.status_code == 201, made.text
    remote = a.client.post(
        "/api/v1/workspaces/ws-a/executions",
        json={"flow": "work", "remote": "to-b", "inputs": {"n": 5}, "wait": 60},
    )
    assert remote.status_code == 201, remote.text
    assert remote.json()["status"] == "success", (remote.json(), a.log_tail(), server.log_tail())
