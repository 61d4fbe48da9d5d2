"""Input hardening through a real server: valid Unicode and finite numbers at every boundary,
unknown fields refused, bodies bounded while they are read, uniform 404s without login and
aggregated rejection events."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from sqlalchemy import select

from flowlink.settings import (
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PUBLIC_BODY_BYTES,
    ServerSettings,
)
from flowlink.store.engine import Store
from flowlink.store.models import Event, Execution
from tests.conftest import LiveServer, make_settings, start_live_server

WS = "harden"
WORKSPACE_YML = f"""name: Hardening
slug: {WS}
automations:
  hook:
    flow: echo
    when:
      endpoint: true
  open-hook:
    flow: echo
    public: true
    when:
      endpoint: true
  on-event:
    flow: echo
    when:
      events: [never.sent]
"""
FLOWS = {
    "echo": "def handler(system, this, inputs):\n    return this.success('echo', got=inputs)\n",
    # Python source escapes: the running script holds real lone surrogates and a NaN.
    "poison": "def handler(system, this, inputs):\n"
    "    this.log('logged \\ud800 here')\n"
    "    this.log('nul \\x00 here')\n"
    "    print('printed \\udc00 there')\n"
    "    this.save(message='saved \\ud800')\n"
    "    return this.success('done \\ud800', value='\\ud800', nan=float('nan'),"
    " **{'key\\udfff': 1})\n",
}
BASE = f"/api/v1/workspaces/{WS}"


def apply_workspace(server: LiveServer) -> None:
    files = {"workspace.yml": WORKSPACE_YML}
    files.update({f"flows/{name}.py": script for name, script in FLOWS.items()})
    response = server.client.post(f"{BASE}/apply", json={"files": files})
    assert response.status_code == 200, response.text


@pytest.fixture
def ws(live_server: LiveServer) -> LiveServer:
    apply_workspace(live_server)
    return live_server


@pytest.fixture(scope="module")
def refusing_ws(module_live_server: LiveServer) -> LiveServer:
    """``ws`` once per module and backend, for the cases whose requests are all refused."""
    apply_workspace(module_live_server)
    return module_live_server


def raw_post(
    client: httpx.Client,
    path: str,
    body: str | bytes,
    *,
    method: str = "POST",
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    content = body.encode() if isinstance(body, str) else body
    return client.request(method, path, content=content, headers=headers)


def assert_refused(response: httpx.Response, field: str, status: int = 422) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["details"]["field"] == field, error
    assert field in error["message"]


def counts(server: LiveServer) -> tuple[int, int]:
    executions = server.client.get(f"{BASE}/executions", params={"limit": 1000})
    events = server.client.get(f"{BASE}/events", params={"limit": 1000})
    assert executions.status_code == 200, executions.text
    assert events.status_code == 200, events.text
    return len(executions.json()["items"]), len(events.json()["items"])


def make_sync_config(server: LiveServer, folder: Path, name: str = "edge") -> None:
    """A sync config (answering end) with a key pair made by openssl."""
    key_pem = folder / "key.pem"
    subprocess.run(
        ["openssl", "genrsa", "-out", str(key_pem), "2048"], check=True, capture_output=True
    )
    public_pem = subprocess.run(
        ["openssl", "pkey", "-in", str(key_pem), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    made = server.client.post(
        f"{BASE}/sync_config",
        json={
            "name": name,
            "own_private_key": key_pem.read_text(),
            "remote_public_key": public_pem,
        },
    )
    assert made.status_code == 201, made.text


# --- strings are valid Unicode, numbers finite -------------------------------------------------

SURROGATE_CASES = [
    ("POST", "/executions", '{"flow": "echo", "inputs": {"name": "\\ud800"}}', "inputs.name"),
    (
        "POST",
        "/executions/batch",
        '{"executions": [{"flow": "echo"}, {"flow": "echo", "inputs": {"a": "x\\udc00"}}]}',
        "executions.1.inputs.a",
    ),
    ("PUT", "/settings/token", '{"value": {"k": ["ok", "\\ud800"]}}', "value.k.1"),
    ("POST", "/events", '{"type": "a.b", "payload": {"deep": {"s": "\\udfff"}}}', "payload.deep.s"),
    ("POST", "/events", '{"events": [{"type": "a.b", "payload": "\\ud800"}]}', "events.0.payload"),
    ("PUT", "/flows/bad", '{"script": "x = \\"\\ud800\\""}', "script"),
    # PostgreSQL cannot hold a NUL character: refused on both stores alike
    ("POST", "/executions", '{"flow": "echo", "inputs": {"n": "a\\u0000b"}}', "inputs.n"),
    ("PUT", "/settings/token", '{"value": ["\\u0000"]}', "value.0"),
    # a remote run's inputs never reach the link's outbox
    (
        "POST",
        "/executions",
        '{"flow": "echo", "remote": "edge", "inputs": {"r": "\\ud800"}}',
        "inputs.r",
    ),
    # a valid pair is fine, a reversed one is not
    ("POST", "/executions", '{"flow": "echo", "inputs": {"p": "\\ude00\\ud83d"}}', "inputs.p"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), SURROGATE_CASES)
def test_lone_surrogate_is_refused_naming_the_field(
    refusing_ws: LiveServer, method: str, path: str, body: str, field: str
) -> None:
    ws = refusing_ws
    before = counts(ws)
    response = raw_post(ws.client, BASE + path, body, method=method)
    assert_refused(response, field)
    assert counts(ws) == before  # nothing stored, every list still answers


def test_surrogate_in_a_key_and_a_valid_pair(ws: LiveServer) -> None:
    response = raw_post(ws.client, f"{BASE}/events", '{"type": "a.b", "payload": {"\\ud800": 1}}')
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "payload.\ufffd"
    fine = raw_post(
        ws.client, f"{BASE}/events", '{"type": "a.b", "payload": {"smile": "\\ud83d\\ude00"}}'
    )
    assert fine.status_code == 201, fine.text
    assert fine.json()["payload"] == {"smile": "\U0001f600"}


def test_public_webhook_refuses_lone_surrogate(ws: LiveServer) -> None:
    before = counts(ws)
    with httpx.Client(base_url=ws.url, timeout=60) as anonymous:
        declared = raw_post(anonymous, f"{BASE}/webhooks/open-hook", '{"a": ["\\ud800"]}')
        assert_refused(declared, "a.0")
        # a body that looks like JSON is parsed as JSON by a webhook whatever its type says
        undeclared = raw_post(
            anonymous, f"{BASE}/webhooks/open-hook", '{"b": "\\udc00"}', content_type="text/plain"
        )
        assert_refused(undeclared, "b")
        # text that is not valid UTF-8 is repaired, not refused: the webhook reads text
        text = raw_post(
            anonymous, f"{BASE}/webhooks/open-hook", b"caf\xe9 \xed\xa0\x80", content_type=None
        )
        assert text.status_code == 200, text.text
        assert text.json()["got"]["body"] == "caf\ufffd \ufffd\ufffd\ufffd"
    after = counts(ws)
    assert after[0] == before[0] + 1  # only the text call ran


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/executions", '{"flow": "echo", "inputs": {"x": NaN}}', "inputs.x"),
        ("/executions", '{"flow": "echo", "inputs": {"x": [1, -Infinity]}}', "inputs.x.1"),
        ("/executions", '{"flow": "echo", "max_runtime": NaN}', "max_runtime"),
        ("/events", '{"type": "a.b", "payload": 1e999}', "payload"),
        ("/events", '{"type": "a.b", "payload": {"v": Infinity}}', "payload.v"),
    ],
)
def test_nan_and_infinity_are_refused(
    refusing_ws: LiveServer, path: str, body: str, field: str
) -> None:
    ws = refusing_ws
    before = counts(ws)
    assert_refused(raw_post(ws.client, BASE + path, body), field)
    assert_refused(
        raw_post(ws.client, f"{BASE}/settings/s", '{"value": NaN}', method="PUT"), "value"
    )
    assert counts(ws) == before


def test_nul_in_the_path_or_the_query_is_refused(ws: LiveServer) -> None:
    for path, params, field in [
        (f"{BASE}/events", {"text": "a\x00b"}, "text"),
        (f"{BASE}/events", {"payload.a": "\x00"}, "payload.a"),
        (f"{BASE}/executions", {"flow": "\x00"}, "flow"),
        (f"{BASE}/executions/a%00b", {}, "path"),
    ]:
        response = ws.client.get(path, params=params)
        assert_refused(response, field)
    with httpx.Client(base_url=ws.url, timeout=60) as anonymous:
        hook = anonymous.post(f"{BASE}/webhooks/open-hook", params={"q": "\x00"})
        assert_refused(hook, "q")
        # a text body is repaired: it is read as text anyway
        text = raw_post(anonymous, f"{BASE}/webhooks/open-hook", b"a\x00b", content_type=None)
        assert text.status_code == 200, text.text
        assert text.json()["got"]["body"] == "a\ufffdb"


def test_invalid_utf8_and_deep_nesting_are_refused(ws: LiveServer) -> None:
    bad_bytes = b'{"flow": "echo", "inputs": {"a": "\xed\xa0\x80"}}'
    assert_refused(raw_post(ws.client, f"{BASE}/executions", bad_bytes), "body")
    # no content type: FastAPI reads JSON, so the check applies too
    assert_refused(raw_post(ws.client, f"{BASE}/executions", bad_bytes, content_type=None), "body")
    deep = "[" * 200_000 + "]" * 200_000
    assert_refused(raw_post(ws.client, f"{BASE}/events", deep), "body")


def test_script_that_logs_and_returns_a_lone_surrogate_is_repaired(ws: LiveServer) -> None:
    started = ws.client.post(f"{BASE}/executions", json={"flow": "poison"})
    assert started.status_code == 201, started.text
    record = ws.wait_for(WS, started.json()["id"], timeout=60)
    assert record["status"] == "success", record
    assert record["message"] == "done \ufffd"
    outputs: Any = record["output_value"]
    assert outputs["value"] == "\ufffd"
    assert outputs["nan"] is None
    assert outputs["key\ufffd"] == 1
    logs = ws.client.get(f"{BASE}/executions/{record['id']}/logs").json()["items"]
    lines = [item["line"] for item in logs]
    assert any("logged \ufffd here" in line for line in lines), lines
    assert any("nul \ufffd here" in line for line in lines), lines
    assert any("printed" in line and "there" in line for line in lines), lines
    counts(ws)  # lists still answer


def test_bad_values_already_stored_never_make_a_list_fail(ws: LiveServer) -> None:
    if ws.store.dialect == "postgresql":
        pytest.skip("PostgreSQL's jsonb refuses lone surrogates and NaN: it cannot hold them")
    started = ws.client.post(f"{BASE}/executions", json={"flow": "echo"})
    execution_id = started.json()["id"]
    ws.wait_for(WS, execution_id)
    emitted = ws.client.post(f"{BASE}/events", json={"type": "stored.bad", "payload": {}})
    event_id = emitted.json()["id"]
    bad = {"s": "bad \ud800", "n": float("nan"), "k\udc00": [float("inf")]}
    with ws.store.write() as session:  # as a row written before the checks existed
        execution = session.get(Execution, execution_id)
        assert execution is not None
        execution.outputs = bad
        execution.inputs = bad
        event = session.scalars(select(Event).where(Event.id == event_id)).one()
        event.payload = bad
    repaired = {"s": "bad \ufffd", "n": None, "k\ufffd": [None]}
    listed = ws.client.get(f"{BASE}/executions")
    assert listed.status_code == 200, listed.text
    shown = ws.client.get(f"{BASE}/executions/{execution_id}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["output_value"] == repaired
    events = ws.client.get(f"{BASE}/events", params={"types": "stored.bad"})
    assert events.status_code == 200, events.text
    assert events.json()["items"][0]["payload"] == repaired
    cloud = ws.client.get(
        f"{BASE}/events",
        params={"types": "stored.bad"},
        headers={"Accept": "application/cloudevents-batch+json"},
    )
    assert cloud.status_code == 200, cloud.text
    seq = events.json()["items"][0]["seq"]
    with ws.client.stream("GET", f"{BASE}/events/stream", params={"after": seq - 1}) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                assert json.loads(line[5:])["payload"] == repaired
                break


# --- unknown fields, and other bodies that used to answer 500 --------------------------------

UNKNOWN_FIELD_CASES = [
    ("POST", "/executions", {"flow": "echo", "bogus": 1}, "bogus"),
    ("POST", "/executions", {"flow": "echo", "max_runtme": 5}, "max_runtme"),
    ("POST", "/executions/batch", {"executions": [{"flow": "echo", "x": 1}]}, "executions.0.x"),
    ("PUT", "/settings/s", {"value": 1, "extra": 2}, "extra"),
    ("PUT", "/flows/f", {"script": "x = 1", "bogus": True}, "bogus"),
    ("POST", "/apply", {"files": {}, "dry_run": True}, "dry_run"),
    ("POST", "/events", {"type": "a.b", "paylod": {}}, "paylod"),
    ("POST", "/events", {"events": [{"type": "a.b", "x": 1}]}, "events.0.x"),
    ("PUT", "/members/someone", {"role": "viewer", "bogus": 1}, "bogus"),
    ("POST", "/sync_config", {"name": "x", "bogus": 1}, "bogus"),
    ("PATCH", "/sync_config/x", {"enabeld": True}, "enabeld"),
    ("POST", "", {"slug": "other-ws", "bogus": 1}, "bogus"),  # POST /workspaces
]


@pytest.mark.parametrize(("method", "path", "body", "field"), UNKNOWN_FIELD_CASES)
def test_unknown_fields_are_refused(
    refusing_ws: LiveServer, method: str, path: str, body: dict[str, Any], field: str
) -> None:
    ws = refusing_ws
    before = counts(ws)
    base = "/api/v1/workspaces" if path == "" else BASE
    response = ws.client.request(method, base + path, json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["error"]["details"]["errors"]
    assert field in [e["field"] for e in errors], errors
    assert counts(ws) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/v1/tokens", {"name": "t", "bogus": 1}, "bogus"),
        ("/api/v1/tokens", {"name": "t", "expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ("/api/v1/users", {"username": "someone", "is_admn": True}, "is_admn"),
        ("/api/v1/users/admin/password", {"pasword": "x"}, "pasword"),
    ],
)
def test_access_bodies_are_strict(
    module_live_server: LiveServer, path: str, body: dict[str, Any], field: str
) -> None:
    live_server = module_live_server
    response = live_server.client.post(path, json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["error"]["details"]["errors"]
    assert field in [e["field"] for e in errors], errors
    assert live_server.client.get("/api/v1/users/someone").status_code == 404


def test_login_and_token_expiry(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as anonymous:
        login = anonymous.post(
            "/api/v1/auth/login", json={"username": "a", "password": "b", "remember": True}
        )
    assert login.status_code == 422, login.text
    assert login.json()["error"]["details"]["errors"][0]["field"] == "remember"
    aware = live_server.client.post(
        "/api/v1/tokens", json={"name": "t", "expires_at": "2030-01-01T00:00:00Z"}
    )
    assert aware.status_code == 201, aware.text


def test_empty_event_batch_is_422(ws: LiveServer) -> None:
    response = ws.client.post(f"{BASE}/events", json={"events": []})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"]["errors"][0]["field"] == "events"


@pytest.mark.parametrize(
    ("settings_yml", "message"),
    [
        ('z: "\\ud800"\n', "lone surrogate"),
        ('w: "a\\0b"\n', "NUL"),
        ('v: {"\\udc00": 1}\n', "lone surrogate"),
    ],
)
def test_yaml_escapes_the_store_cannot_hold_are_refused(
    refusing_ws: LiveServer, settings_yml: str, message: str
) -> None:
    ws = refusing_ws
    files = {"workspace.yml": f"name: Y\nslug: {WS}-yaml\n", "settings.yml": settings_yml}
    response = ws.client.post(f"{BASE}-yaml/apply", json={"files": files})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"]["file"] == "settings.yml"
    assert error["details"]["line"] == 1
    assert message in error["message"]


def test_values_too_long_for_the_store_are_422(ws: LiveServer) -> None:
    """Found on PostgreSQL, where a value wider than its column answered 500."""
    long_name = ws.client.post("/api/v1/workspaces", json={"slug": "wide", "name": "n" * 201})
    assert long_name.status_code == 422, long_name.text
    assert long_name.json()["error"]["details"]["errors"][0]["field"] == "name"
    ad_hoc = ws.client.post(f"{BASE}/executions", json={"script": "x = 1", "name": "n" * 129})
    assert ad_hoc.status_code == 422, ad_hoc.text
    flow = ws.client.post(f"{BASE}/executions", json={"flow": "f" * 129})
    assert flow.status_code == 422, flow.text
    with httpx.Client(base_url=ws.url, timeout=60) as anonymous:
        hook = anonymous.post(
            f"{BASE}/webhooks/open-hook?async=1", headers={"X-Correlation-Id": "c" * 65}
        )
        assert_refused(hook, "X-Correlation-Id")
        fits = anonymous.post(
            f"{BASE}/webhooks/open-hook?async=1", headers={"X-Correlation-Id": "c" * 64}
        )
        assert fits.status_code == 202, fits.text


# --- uniform 404 without login ---------------------------------------------------------------


def test_unknown_workspace_and_automation_answer_alike(ws: LiveServer) -> None:
    with httpx.Client(base_url=ws.url, timeout=60) as anonymous:
        answers = [
            anonymous.post("/api/v1/workspaces/no-such-ws/webhooks/hook"),
            anonymous.post(f"{BASE}/webhooks/no-such-hook"),
            anonymous.post(f"{BASE}/webhooks/on-event"),  # exists, but has no webhook
            anonymous.post("/api/v1/workspaces/no-such-ws/sync_config/x/sync", content=b"{}"),
            anonymous.post(f"{BASE}/sync_config/no-such-config/sync", content=b"{}"),
        ]
    for answer in answers:
        assert answer.status_code == 404, answer.text
        assert answer.content == answers[0].content
    assert "no-such" not in answers[0].text


# --- body size limits --------------------------------------------------------------------------


def test_limits_from_the_environment() -> None:
    settings = ServerSettings.from_env({})
    assert settings.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 16 * 1024 * 1024
    assert settings.max_public_body_bytes == DEFAULT_MAX_PUBLIC_BODY_BYTES == 1024 * 1024
    custom = ServerSettings.from_env(
        {"FLOWLINK_MAX_BODY_BYTES": "2048", "FLOWLINK_MAX_PUBLIC_BODY_BYTES": "512"}
    )
    assert (custom.max_body_bytes, custom.max_public_body_bytes) == (2048, 512)


def _http_exchange(port: int, head: bytes, body_chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request by hand; returns what the server answered and how much body was sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        sock.settimeout(0.0)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if answer:
                break
            try:
                sock.setblocking(True)
                sock.settimeout(5)
                sock.sendall(chunk)
                sent += len(chunk)
                sock.settimeout(0.0)
            except OSError:
                break
        sock.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    return answer, sent


def test_100_mb_login_is_refused_early_without_memory_growth(live_server: LiveServer) -> None:
    port = int(live_server.url.rsplit(":", 1)[1])
    megabyte = b"x" * (1024 * 1024)
    rss_before = psutil.Process().memory_info().rss
    # Content-Length says 100 MB: refused before a byte of the body is read.
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )
    answer, sent = _http_exchange(port, head, iter([megabyte] * 100))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "payload_too_large"
    assert error["details"] == {"limit": 1048576, "setting": "FLOWLINK_MAX_PUBLIC_BODY_BYTES"}
    assert sent < 50 * 1024 * 1024
    # Chunked, no Content-Length: refused once the count passes the limit.
    head = (
        b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n" % len(megabyte) + megabyte + b"\r\n"
    answer, sent = _http_exchange(port, head, iter([chunk] * 100))
    assert sent < 50 * 1024 * 1024, sent
    if answer:  # the server may close before the answer is read back; it must not be 2xx
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    growth = psutil.Process().memory_info().rss - rss_before
    assert growth < 40 * 1024 * 1024, f"server grew by {growth} bytes"
    assert live_server.client.get("/api/v1/health").status_code == 200


@pytest.fixture
def small_limits(database_url: str) -> Iterator[LiveServer]:
    settings = make_settings(
        database_url, max_body_bytes=256 * 1024, max_public_body_bytes=8 * 1024
    )
    started = start_live_server(settings, with_worker=False)
    apply_workspace(started.live)
    yield started.live
    started.stop()


def test_configured_limits_per_route(small_limits: LiveServer, tmp_path: Path) -> None:
    server = small_limits
    big = {"files": {"flows/big.py": "# " + "x" * 300_000}}
    refused = server.client.post(f"{BASE}/apply", json=big)
    assert refused.status_code == 413, refused.text
    assert refused.json()["error"]["details"] == {
        "limit": 256 * 1024,
        "setting": "FLOWLINK_MAX_BODY_BYTES",
    }
    assert "262144 bytes" in refused.json()["error"]["message"]
    fits = server.client.put(f"{BASE}/flows/mid", json={"script": "# " + "x" * 100_000})
    assert fits.status_code in (200, 201), fits.status_code
    twenty_kb = {"flow": "echo", "inputs": {"x": "y" * 20_000}}
    assert server.client.post(f"{BASE}/executions", json=twenty_kb).status_code == 201
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        # without credentials the public limit applies before anything else
        public = anonymous.post(f"{BASE}/executions", json=twenty_kb)
        assert public.status_code == 413, public.text
        assert public.json()["error"]["details"]["setting"] == "FLOWLINK_MAX_PUBLIC_BODY_BYTES"
        # made-up credentials buy no room: checked once the body passes the public limit
        for headers in ({"Authorization": "Bearer fl_made_up"}, {"Cookie": "flowlink_session=x"}):
            forged = anonymous.post(f"{BASE}/executions", json=twenty_kb, headers=headers)
            assert forged.status_code == 401, forged.text
            assert forged.json()["error"]["code"] == "unauthorized"
        port = int(server.url.rsplit(":", 1)[1])
        head = (
            f"POST {BASE}/executions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fl_made_up"
            "\r\nContent-Type: application/json\r\nContent-Length: 200000\r\n\r\n"
        ).encode()
        answer, _ = _http_exchange(port, head, iter([]))  # answered before any body
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
        hook = anonymous.post(f"{BASE}/webhooks/open-hook?async=1", json=twenty_kb)
        assert hook.status_code == 413
        small_hook = anonymous.post(f"{BASE}/webhooks/open-hook?async=1", json={"a": 1})
        assert small_hook.status_code == 202, small_hook.text
        make_sync_config(server, tmp_path)
        sync = f"{BASE}/sync_config/edge/sync"
        unsigned = anonymous.post(sync, content=json.dumps({"messages": [], "p": "x" * 20_000}))
        assert unsigned.status_code == 413
        # with a signature (checked once read) the full limit applies; this one is forged
        forged = anonymous.post(
            sync,
            content=json.dumps({"messages": [], "p": "x" * 20_000}),
            headers={"Signature-Input": 'sig=("@method");keyid="k"', "Signature": "sig=:AA==:"},
        )
        assert forged.status_code == 401, forged.text


# --- rejections are aggregated -----------------------------------------------------------------


@pytest.fixture
def short_window(database_url: str) -> Iterator[LiveServer]:
    settings = make_settings(database_url, rejection_window=1.5)
    started = start_live_server(settings, with_worker=False)
    apply_workspace(started.live)
    yield started.live
    started.stop()


def _rejections(server: LiveServer, **params: str) -> list[dict[str, Any]]:
    response = server.client.get(f"{BASE}/events", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return list(response.json()["items"])


def test_unsigned_sync_and_bad_webhook_keys_make_one_event_per_window(
    short_window: LiveServer, tmp_path: Path
) -> None:
    server = short_window
    make_sync_config(server, tmp_path)
    started = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=60) as anonymous:
        for _ in range(120):
            answer = anonymous.post(f"{BASE}/sync_config/edge/sync", json={"messages": []})
            assert answer.status_code == 401
        for _ in range(80):
            answer = anonymous.post(f"{BASE}/webhooks/hook", headers={"X-Flowlink-Key": "nope"})
            assert answer.status_code == 401
    elapsed = time.monotonic() - started
    deadline = time.monotonic() + 15
    while True:
        sync_events = _rejections(server, types="sync.rejected")
        hook_events = _rejections(server, types="error", **{"source.automationSlug": "hook"})
        total_sync = sum(e["payload"]["count"] for e in sync_events)
        total_hook = sum(e["payload"]["count"] for e in hook_events)
        if (total_sync, total_hook) == (120, 80) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (total_sync, total_hook) == (120, 80), (sync_events, hook_events)
    windows = int(elapsed / 1.5) + 2
    assert len(sync_events) <= 2 * windows, len(sync_events)
    assert len(hook_events) <= 2 * windows, len(hook_events)
    summary = max(sync_events, key=lambda e: e["payload"]["count"])
    assert summary["payload"]["count"] > 1
    assert summary["payload"]["windowSeconds"] == 1.5
    assert summary["payload"]["reason"]
    assert {"firstAt", "lastAt"} <= set(summary["payload"])
    assert summary["source"]["http"]["client"] == "127.0.0.1"


def test_counts_of_open_windows_are_recorded_when_the_server_stops(database_url: str) -> None:
    started = start_live_server(make_settings(database_url), with_worker=False)
    apply_workspace(started.live)
    with httpx.Client(base_url=started.live.url, timeout=60) as anonymous:
        for _ in range(7):
            answer = anonymous.post(f"{BASE}/webhooks/hook", headers={"X-Flowlink-Key": "nope"})
            assert answer.status_code == 401
    started.stop()  # long before the 60 s window closes
    store = Store(database_url)
    try:
        with store.read() as session:
            events = list(session.scalars(select(Event).where(Event.type == "error")))
    finally:
        store.dispose()
    counts = sorted(e.payload["count"] for e in events if e.payload.get("automation") == "hook")
    assert counts == [1, 6], counts
