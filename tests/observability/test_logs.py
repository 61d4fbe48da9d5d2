"""Structured logs: JSON lines with execution context, and no secret in any line."""

from __future__ import annotations

import io
import json
import logging
import uuid
from pathlib import Path

import pytest

from flowlink.observability import logs
from tests.linking.conftest import KeyMaker
from tests.linking.servers import ServerFactory

LEAKY = """import flow_api

def handler(system, this, inputs):
    key = system.setting('vendor_key').get()
    raise RuntimeError(f"vendor said no to {key} with {inputs['token']} and {inputs['pem']}")
"""
FINE = "def handler(system, this, inputs):\n    return this.success('fine')\n"


def test_scrub_removes_each_kind_of_secret() -> None:
    logs.redact("registered-secret-value")
    cases = {
        "Authorization: Bearer abc.def-ghi": "Authorization: Bearer [redacted]",
        "token fl_" + "x" * 43 + " refused": "token [redacted] refused",
        "postgresql://flow:hunter2@db.example.com/flowlink": (
            "postgresql://flow:[redacted]@db.example.com/flowlink"
        ),
        "login failed password=hunter2": "login failed password=[redacted]",
        '{"private_key": "abc"}': '{"private_key": "[redacted]"}',
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- x": "[redacted] x",
        "saw registered-secret-value here": "saw [redacted] here",
        "an ordinary line": "an ordinary line",
    }
    for raw, expected in cases.items():
        assert logs.scrub(raw) == expected


def test_json_lines_carry_the_context_and_never_the_secret() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("flowlink.test.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        with logs.log_context(workspace="ws", executionId="e1", correlationId="c1"):
            logger.info("start %s", "Bearer sekrit")
            try:
                raise ValueError("password=hunter2")
            except ValueError:
                logger.exception("failed")
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == ["start Bearer [redacted]", "failed", "outside"]
    for line in lines[:2]:
        assert (line["workspace"], line["executionId"], line["correlationId"]) == ("ws", "e1", "c1")
    assert "executionId" not in lines[2]
    assert "password=[redacted]" in lines[1]["exception"] and "hunter2" not in stream.getvalue()
    assert lines[0]["time"].endswith("Z") and lines[0]["level"] == "info"


def test_invalid_format_is_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="FLOWLINK_LOG_FORMAT"):
        logs.log_format({"FLOWLINK_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="FLOWLINK_LOG_LEVEL"):
        logs.log_level({"FLOWLINK_LOG_LEVEL": "loud"})


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_server_logs_are_json_with_ids_and_without_secrets(
    database_url: str, server_factory: ServerFactory, make_key: KeyMaker, tmp_path: Path
) -> None:
    server = server_factory(
        database_url, "json", env={"FLOWLINK_LOG_FORMAT": "json", "FLOWLINK_LOG_LEVEL": "debug"}
    )
    server.start()
    server.create_workspace(
        "logs", flows={"leaky": LEAKY, "fine": FINE}, settings={"vendor_key": "placeholder"}
    )
    vendor_key = f"vk-{uuid.uuid4().hex}"
    answer = server.client.put(
        "/api/v1/workspaces/logs/settings/vendor_key", json={"value": vendor_key, "secret": True}
    )
    assert answer.status_code == 200, answer.text
    token = server.token
    pem = make_key("openssl-genrsa").read_text()
    password = f"pw-{uuid.uuid4().hex}"
    server.client.post("/api/v1/auth/login", json={"username": "admin", "password": password})
    leaky = server.run("logs", "leaky", {"token": token, "pem": pem})
    # The run's own message has the secret replaced; the token and key it also names are not
    # settings, so only the server log's scrubbing keeps them out.
    assert leaky["status"] == "error" and "vendor said no to [secret]" in leaky["message"]
    assert token in leaky["message"]
    fine = server.run("logs", "fine")
    # A link whose other end is down: its connector logs the failure.
    server.client.post(
        "/api/v1/workspaces/logs/sync_config",
        json={
            "name": "nowhere",
            "own_private_key": pem,
            "remote_public_key": pem,
            "remote_url": "http://127.0.0.1:9/api/v1/workspaces/x/sync_config/y/sync",
        },
    )
    server.stop()

    text = server.log_path.read_text()
    entries = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("--- harness"):
            continue
        entry = json.loads(line)  # every line is one JSON object
        assert {"time", "level", "logger", "message"} <= set(entry), entry
        entries.append(entry)
    assert any("serving at" in e["message"] for e in entries)
    for run in (leaky, fine):
        lines = [e for e in entries if e.get("executionId") == run["id"]]
        assert [e["message"].split(" ")[1] for e in lines] == ["started", "ended:"], lines
        for entry in lines:
            assert entry["workspace"] == "logs"
            assert entry["correlationId"] == run["correlation_id"]
    ended = next(
        e for e in entries if e.get("executionId") == leaky["id"] and "ended" in e["message"]
    )
    assert "vendor said no to [secret] with [redacted]" in ended["message"]
    for secret in (vendor_key, token, password, server.secret_key, pem.splitlines()[1]):
        assert secret not in text
