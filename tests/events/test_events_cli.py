"""``flowlink events ...`` as a user runs it: real processes against a real server and store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta

from sqlalchemy import update

from flowlink.store.models import Event, utcnow
from tests.conftest import LiveServer

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]


def cli(
    server: LiveServer | None, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config", **(env or {})}
    if server is not None:
        environ.update({"FLOWLINK_SERVER": server.url, "FLOWLINK_TOKEN": server.token})
    return subprocess.run(
        [*FLOWLINK, *args], env=environ, capture_output=True, text=True, timeout=120
    )


def test_emit_search_tail(live_server: LiveServer) -> None:
    live_server.client.post("/api/v1/workspaces", json={"slug": "cli-ev", "name": "CLI events"})
    tail = subprocess.Popen(
        [*FLOWLINK, "events", "tail", "cli-ev", "--types", "cli.*", "--count", "2", "--json"],
        env={
            **os.environ,
            "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config",
            "FLOWLINK_SERVER": live_server.url,
            "FLOWLINK_TOKEN": live_server.token,
        },
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.0)  # let tail connect
        out = cli(
            live_server, "events", "emit", "cli-ev", "cli.one", "--payload", '{"a": 1}', "--json"
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["type"] == "cli.one"
        assert cli(live_server, "events", "emit", "cli-ev", "cli.two").returncode == 0
        bad = cli(live_server, "events", "emit", "cli-ev", "bad type")
        assert bad.returncode != 0 and "invalid event type" in bad.stderr
        bad = cli(live_server, "events", "emit", "cli-ev", "x", "--payload", "{nope")
        assert bad.returncode != 0 and "not valid JSON" in bad.stderr
        stdout, _ = tail.communicate(timeout=30)
    finally:
        tail.kill()
    assert [json.loads(line)["type"] for line in stdout.splitlines()] == ["cli.one", "cli.two"]
    found = cli(live_server, "events", "search", "cli-ev", "--types", "cli.*", "--json")
    assert found.returncode == 0, found.stderr
    assert [e["type"] for e in json.loads(found.stdout)["items"]] == ["cli.two", "cli.one"]
    found = cli(live_server, "events", "search", "cli-ev", "--match", "payload.a=1", "--json")
    assert [e["type"] for e in json.loads(found.stdout)["items"]] == ["cli.one"]
    bad = cli(live_server, "events", "search", "cli-ev", "--after", "never")
    assert bad.returncode != 0 and "afterDate" in bad.stderr
    table = cli(live_server, "events", "search", "cli-ev", "--text", "cli")
    assert "cli.one" in table.stdout


def test_cleanup_dry_run_then_real(live_server: LiveServer, database_url: str) -> None:
    live_server.client.post("/api/v1/workspaces", json={"slug": "stale", "name": "Stale"})
    with live_server.store.write() as session:
        session.execute(update(Event).values(created_at=utcnow() - timedelta(days=20)))
    env = {"FLOWLINK_DATABASE_URL": database_url, "FLOWLINK_SECRET_KEY": "test-secret-key"}
    dry = cli(None, "events", "cleanup", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dryRun"] is True
    assert report["counts"]["inactive_workspace"] >= 1
    assert any(w["workspaceSlug"] == "stale" for w in report["workspaces"])
    real = cli(None, "events", "cleanup", env=env)
    assert real.returncode == 0, real.stderr
    assert "deleted" in real.stdout and "inactive_workspace" in real.stdout
    again = cli(None, "events", "cleanup", "--dry-run", "--json", env=env)
    assert json.loads(again.stdout)["total"] == 0
    found = live_server.client.get("/api/v1/workspaces/stale/events").json()["items"]
    assert found == []
