"""Backup while the server runs, restore into a new store, and carry on from there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from flowlink.linking.service import sync_path
from tests.conftest import POSTGRES_URL, _admin_execute, _database_url
from tests.linking.conftest import KeyMaker, public_pem_of
from tests.linking.servers import ServerFactory, ServerProcess

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]
WORK = (
    "def handler(system, this, inputs):\n"
    "    this.log('step', inputs.get('n'))\n"
    "    return this.success('done', n=inputs.get('n'))\n"
)


def flowlink(
    database_url: str, *args: str, secret_key: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWLINK_")}
    env["FLOWLINK_DATABASE_URL"] = database_url
    if secret_key:
        env["FLOWLINK_SECRET_KEY"] = secret_key
    return subprocess.run([*FLOWLINK, *args], env=env, capture_output=True, text=True, timeout=120)


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def snapshot(server: ServerProcess, ws: str) -> dict[str, Any]:
    """What the round trip must keep: executions, their logs, events, the link's config."""
    executions = ok(server.client.get(f"/api/v1/workspaces/{ws}/executions", params={"limit": 500}))
    logs = {
        item["id"]: [
            line["line"]
            for line in ok(
                server.client.get(f"/api/v1/workspaces/{ws}/executions/{item['id']}/logs")
            )["items"]
        ]
        for item in executions["items"]
    }
    events = ok(server.client.get(f"/api/v1/workspaces/{ws}/events", params={"limit": 1000}))
    link = ok(server.client.get(f"/api/v1/workspaces/{ws}/sync_config/to-b"))
    return {
        "executions": {i["id"]: (i["status"], i["message"]) for i in executions["items"]},
        "logs": logs,
        "events": sorted(e["id"] for e in events["items"]),
        "link": {k: link[k] for k in ("name", "remote_url", "direction", "enabled")},
        "link_connected": link["state"].get("connected"),
    }


@pytest.fixture
def empty_store_url(database_url: str, tmp_path: Path) -> Any:
    """Where to restore to: a path with no store yet, or an empty PostgreSQL database."""
    if database_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'restored' / 'flowlink.db'}"
        return
    name = f"flowlink_restore_{uuid.uuid4().hex[:12]}"
    _admin_execute(f'CREATE DATABASE "{name}"')
    try:
        yield _database_url(POSTGRES_URL, name)
    finally:
        _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
def test_backup_and_restore_round_trip(
    two_servers: tuple[ServerProcess, ServerProcess],
    server_factory: ServerFactory,
    make_key: KeyMaker,
    empty_store_url: str,
    tmp_path: Path,
) -> None:
    a, b = two_servers
    a.create_workspace("ws-a", flows={"work": WORK})
    b.create_workspace("ws-b", flows={"work": WORK})
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    ok(b.client.post("/api/v1/workspaces/ws-b/sync_config", json={
        "name": "from-a", "own_private_key": key_b.read_text(),
        "remote_public_key": public_pem_of(key_a),
    }), 201)  # fmt: skip
    ok(a.client.post("/api/v1/workspaces/ws-a/sync_config", json={
        "name": "to-b", "own_private_key": key_a.read_text(),
        "remote_public_key": public_pem_of(key_b),
        "remote_url": b.url + sync_path("ws-b", "from-a"),
    }), 201)  # fmt: skip
    for n in range(3):
        assert a.run("ws-a", "work", {"n": n})["status"] == "success"
    remote = ok(
        a.client.post(
            "/api/v1/workspaces/ws-a/executions",
            json={"flow": "work", "remote": "to-b", "inputs": {"n": 99}, "wait": 30},
        ),
        201,
    )
    assert remote["status"] == "success", remote
    ok(
        a.client.post(
            "/api/v1/workspaces/ws-a/events", json={"type": "custom.kept", "payload": {}}
        ),
        201,
    )
    before = snapshot(a, "ws-a")
    assert before["link_connected"] is True and len(before["executions"]) == 4

    backup_file = tmp_path / "flowlink.backup"
    made = flowlink(a.database_url, "backup", str(backup_file), "--json")
    assert made.returncode == 0, made.stderr
    report = json.loads(made.stdout)
    assert report["file"] == str(backup_file) and report["size"] > 0
    assert "secret key" in made.stderr and a.secret_key not in made.stderr + made.stdout
    assert backup_file.stat().st_mode & 0o777 == 0o600
    again = flowlink(a.database_url, "backup", str(backup_file))
    assert again.returncode != 0 and "exists" in again.stderr

    after_backup = a.run("ws-a", "work", {"n": 1000})  # not in the backup
    a.stop()

    not_a_backup = tmp_path / "junk.backup"
    not_a_backup.write_text("not a store")
    refused = flowlink(empty_store_url, "restore", str(not_a_backup))
    # the message names the file (the console wraps a long path across lines)
    assert refused.returncode != 0 and "junk.backup" in refused.stderr.replace("\n", "")

    restored = flowlink(empty_store_url, "restore", str(backup_file))
    assert restored.returncode == 0, restored.stderr
    twice = flowlink(empty_store_url, "restore", str(backup_file))
    assert twice.returncode != 0 and "--force" in twice.stderr

    c = server_factory(empty_store_url, "c", secret_key=a.secret_key, token=a.token)
    c.start()
    after = snapshot(c, "ws-a")
    assert after["executions"] == before["executions"]
    assert after_backup["id"] not in after["executions"]
    assert after["logs"] == before["logs"]
    assert set(before["events"]) <= set(after["events"])  # plus this start's link events
    assert after["link"] == before["link"]
    # The restored store's keys decrypt and its link state carries on with B.
    again_remote = ok(
        c.client.post(
            "/api/v1/workspaces/ws-a/executions",
            json={"flow": "work", "remote": "to-b", "inputs": {"n": 7}, "wait": 30},
        ),
        201,
    )
    assert again_remote["status"] == "success", again_remote
    detail = ok(c.client.get(f"/api/v1/workspaces/ws-a/executions/{again_remote['id']}"))
    assert detail["output_value"]["n"] == 7
