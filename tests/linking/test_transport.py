"""One exchange against a real HTTP(S) server on 127.0.0.1, with a CA made by openssl."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowlink.errors import Invalid
from flowlink.linking import keys, signing
from flowlink.linking.protocol import envelope
from flowlink.linking.transport import LinkRefused, LinkUnavailable, TlsOptions, Transport

NOW = "2026-11-21T10:00:00Z"
ACK = {"id": "r1", "type": "ack", "created_at": NOW, "ids": ["m1"]}
CANCEL = {"id": "m1", "type": "execution.cancel", "created_at": NOW, "origin_execution_id": "e1"}

CLIENT = keys.load_private_key(keys.generate_key_pair(2048).private_pem)
SERVER = keys.load_private_key(keys.generate_key_pair(2048).private_pem)
STRANGER = keys.load_private_key(keys.generate_key_pair(2048).private_pem)


class Remote(ThreadingHTTPServer):
    """The answering end: verifies our request and answers with a signed envelope."""

    answer_key = SERVER
    status = 200
    received: list[dict[str, Any]]
    url = ""


class Handler(BaseHTTPRequestHandler):
    server: Remote

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = httpx.Headers(dict(self.headers.items()))
        try:
            signing.verify_request(
                {keys.fingerprint(CLIENT): CLIENT.public_key()},
                "POST",
                self.server.url,
                headers,
                body,
            )
        except signing.SignatureRejected as exc:
            self._send(
                401,
                {
                    "error": {
                        "code": "unauthorized",
                        "message": exc.message,
                        "details": {"reason": exc.reason},
                    }
                },
                sign=False,
            )
            return
        self.server.received.append(json.loads(body))
        if self.server.status != 200:
            self._send(
                self.server.status,
                {"error": {"code": "x", "message": "nope", "details": {"reason": "disabled"}}},
                sign=False,
            )
            return
        self._send(200, envelope([ACK]))

    def _send(self, status: int, data: dict[str, Any], sign: bool = True) -> None:
        content = json.dumps(data).encode()
        headers = httpx.Headers({"content-type": "application/json"})
        if sign:
            signing.sign_response(
                self.server.answer_key,
                status,
                headers,
                content,
                request_method="POST",
                request_url=self.server.url,
            )
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    d = tmp_path_factory.mktemp("pki")
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, cwd=d)  # noqa: E731
    run(
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=flowlink test CA",
    )
    run(
        "openssl",
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    )
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "openssl",
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    )
    return {name: d / name for name in ("ca.pem", "server.pem", "server.key")}


@contextlib.contextmanager
def running_remote(scheme: str, pki: dict[str, Path]) -> Iterator[Remote]:
    """A remote sync endpoint on a free port, plain or with the test CA's certificate."""
    server = Remote(("127.0.0.1", 0), Handler)
    if scheme == "https":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki["server.pem"], pki["server.key"])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.received = []
    port = server.server_address[1]
    server.url = f"{scheme}://127.0.0.1:{port}/api/v1/workspaces/a/sync_config/b/sync"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(params=["http", "https"])
def remote(request: pytest.FixtureRequest, pki: dict[str, Path]) -> Iterator[Remote]:
    with running_remote(request.param, pki) as server:
        yield server


@pytest.fixture
def https_remote(pki: dict[str, Path]) -> Iterator[Remote]:
    with running_remote("https", pki) as server:
        yield server


def transport(remote: Remote, pki: dict[str, Path], **tls: Any) -> Transport:
    options = TlsOptions(**tls) if tls else TlsOptions(ca_certificate=pki["ca.pem"].read_text())
    return Transport(remote.url, CLIENT, [SERVER.public_key()], options, timeout=10)


def test_signed_exchange_round_trip(remote: Remote, pki: dict[str, Path]) -> None:
    link = transport(remote, pki)
    answer = link.exchange(envelope([CANCEL]))
    assert [message.wire() for message in answer.messages] == [ACK]
    assert remote.received == [envelope([CANCEL])]


def test_untrusted_certificate_is_unavailable_and_verify_off_works(
    https_remote: Remote, pki: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    remote = https_remote
    with pytest.raises(LinkUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
        transport(remote, pki, verify_ssl=True).exchange(envelope([]))
    with caplog.at_level(logging.WARNING):
        link = transport(remote, pki, verify_ssl=False)
    assert "verification is OFF" in caplog.text
    assert [message.wire() for message in link.exchange(envelope([])).messages] == [ACK]


def test_answer_signed_by_another_key_is_refused(remote: Remote, pki: dict[str, Path]) -> None:
    remote.answer_key = STRANGER
    with pytest.raises(LinkRefused) as info:
        transport(remote, pki).exchange(envelope([CANCEL]))
    assert info.value.reason == "unknown_key"


def test_refusal_and_outage_are_told_apart(remote: Remote, pki: dict[str, Path]) -> None:
    remote.status = 403
    with pytest.raises(LinkRefused) as info:
        transport(remote, pki).exchange(envelope([]))
    assert info.value.status == 403 and info.value.reason == "disabled"
    stranger = Transport(
        remote.url,
        STRANGER,
        [SERVER.public_key()],
        TlsOptions(ca_certificate=pki["ca.pem"].read_text()),
    )
    with pytest.raises(LinkRefused) as info:
        stranger.exchange(envelope([]))
    assert info.value.status == 401 and info.value.reason == "unknown_key"
    remote.shutdown()
    remote.server_close()
    with pytest.raises(LinkUnavailable):
        transport(remote, pki).exchange(envelope([]))


def test_bad_ca_certificate_names_the_field() -> None:
    with pytest.raises(Invalid) as info:
        Transport(
            "https://127.0.0.1:9/x",
            CLIENT,
            [SERVER.public_key()],
            TlsOptions(ca_certificate="not a certificate"),
        )
    assert info.value.details["field"] == "ca_certificate"
