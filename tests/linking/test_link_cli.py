"""``flowlink link create`` and ``flowlink link status`` against two real servers."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from flowlink.cli import common
from flowlink.cli.main import app
from flowlink.linking import keys
from flowlink.store.models import SyncConfig
from tests.conftest import LiveServer, StartedServer, make_settings, start_live_server

BITS = "2048"  # fast to generate; the default is 3072


@pytest.fixture
def two_live_servers(
    database_url: str, second_database_url: str
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """Two servers on two stores: workspace ``ops`` on the first, ``edge`` on the second."""
    servers: list[StartedServer] = []
    try:
        for url in (database_url, second_database_url):
            servers.append(start_live_server(make_settings(url), with_worker=False))
        one, two = (server.live for server in servers)
        for server, slug in ((one, "ops"), (two, "edge")):
            response = server.client.post("/api/v1/workspaces", json={"slug": slug})
            assert response.status_code == 201, response.text
        yield one, two
    finally:
        for server in servers:
            server.stop()


def flowlink(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """Run the CLI in this process (the servers are real; nothing is mocked)."""
    environ: dict[str, str | None] = {
        "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config",
        "FLOWLINK_SERVER": None,
        "FLOWLINK_TOKEN": None,
        "FLOWLINK_FROM_TOKEN": None,
        "FLOWLINK_TO_TOKEN": None,
        **(env or {}),
    }
    return CliRunner().invoke(app, list(args), env=environ)


def link(one: LiveServer, two: LiveServer, *extra: str, from_token: str = "") -> Result:
    """``link create`` from ops on the first server to edge on the second, with their admin
    tokens (on the first, ``from_token`` if given)."""
    return flowlink(
        "link",
        "create",
        "--from-server",
        one.url,
        "--from-workspace",
        "ops",
        "--to-server",
        two.url,
        "--to-workspace",
        "edge",
        "--bits",
        BITS,
        *extra,
        env={"FLOWLINK_FROM_TOKEN": from_token or one.token, "FLOWLINK_TO_TOKEN": two.token},
    )


def configs(server: LiveServer, ws: str) -> dict[str, dict[str, Any]]:
    """The sync configs of a workspace by name, as the API shows them."""
    response = server.client.get(f"/api/v1/workspaces/{ws}/sync_config")
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["items"]}


def no_keys_in(result: Result) -> None:
    text = result.stdout + result.stderr
    assert "PRIVATE KEY" not in text and "PUBLIC KEY" not in text


def test_create_links_both_ends_crosswise(
    two_live_servers: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    one, two = two_live_servers
    result = link(
        one, two, "--sync-interval", "5", "--send-all-executions", "--role", "viewer", "--json"
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    no_keys_in(result)
    shown = json.loads(result.stdout)
    controlling = configs(one, "ops")["edge"]  # the default names: the other workspace's slug
    controlled = configs(two, "edge")["ops"]
    assert (controlled["role"], controlling["role"]) == ("viewer", "editor")
    own = controlling["own_public_key_fingerprint"]
    assert shown["controlling"]["own_public_key_fingerprint"] == own
    assert controlling["remote_public_key_fingerprints"] == [
        controlled["own_public_key_fingerprint"]
    ]
    assert controlled["remote_public_key_fingerprints"] == [own]
    assert own != controlled["own_public_key_fingerprint"]
    assert controlled["sync_endpoint"] == "/api/v1/workspaces/edge/sync_config/ops/sync"
    assert controlling["remote_url"] == two.url + controlled["sync_endpoint"]
    assert controlled["remote_url"] is None
    assert (controlling["direction"], controlled["direction"]) == ("controlling", "controlled")
    for view in (controlling, controlled):
        assert view["sync_interval"] == 5.0 and view["send_all_executions"] is True
    assert shown["connecting"] == "controlling" and shown["reverse"] is False

    # Reverse connect: the controlled side connects out to the controller.
    result = link(
        one,
        two,
        "--reverse",
        "--name",
        "rev",
        "--remote-name",
        "rev",
        "--public-url",
        one.url + "/",
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    controlling = configs(one, "ops")["rev"]
    controlled = configs(two, "edge")["rev"]
    assert controlled["direction"] == "controlled"
    assert controlled["remote_url"] == f"{one.url}/api/v1/workspaces/ops/sync_config/rev/sync"
    assert controlling["direction"] == "controlling" and controlling["remote_url"] is None
    assert controlled["remote_public_key_fingerprints"] == [
        controlling["own_public_key_fingerprint"]
    ]
    assert controlling["remote_public_key_fingerprints"] == [
        controlled["own_public_key_fingerprint"]
    ]
    assert "reverse connect: edge connects out to ops" in result.stdout

    # The summary names both ends and their fingerprints; --save-keys writes the pairs.
    folder = tmp_path / "keys"
    result = link(
        one, two, "--name", "to-edge", "--remote-name", "from-ops", "--save-keys", str(folder)
    )
    assert result.exit_code == 0, result.stdout + result.stderr
    no_keys_in(result)
    controlling = configs(one, "ops")["to-edge"]
    controlled = configs(two, "edge")["from-ops"]
    out = result.stdout
    assert "ops controls edge, immediate" in out
    assert f"connects to  {controlling['remote_url']}" in out
    assert f"answers at   {controlled['sync_endpoint']}" in out
    for view in (controlling, controlled):
        assert view["own_public_key_fingerprint"] in out
    assert "plain http" in out  # the server's warning is passed on
    assert sorted(p.name for p in folder.iterdir()) == [
        "edge.from-ops.key",
        "edge.from-ops.pub",
        "ops.to-edge.key",
        "ops.to-edge.pub",
    ]
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folder.iterdir())
    private = keys.load_private_key((folder / "ops.to-edge.key").read_text())
    assert keys.fingerprint(private) == controlling["own_public_key_fingerprint"]


def test_failures_leave_nothing_behind(
    two_live_servers: tuple[LiveServer, LiveServer], tmp_path: Path
) -> None:
    one, two = two_live_servers
    # A wrong token for the second server.
    result = flowlink(
        "link",
        "create",
        "--from-server",
        one.url,
        "--from-token",
        one.token,
        "--from-workspace",
        "ops",
        "--to-server",
        two.url,
        "--to-token",
        "wrong",
        "--to-workspace",
        "edge",
        "--bits",
        BITS,
    )
    assert result.exit_code == 1
    assert two.url in result.stderr
    # The name is taken on the second server.
    taken = link(one, two, "--remote-name", "cloud")
    assert taken.exit_code == 0, taken.stderr
    result = link(one, two, "--name", "other", "--remote-name", "cloud")
    assert result.exit_code == 1
    assert "'cloud' already exists" in result.stderr and "--remote-name" in result.stderr
    assert list(configs(one, "ops")) == ["edge"]
    # The answering end is made, then the connecting end is refused (an owner may not manage
    # sync configs): the answering end is removed again, and so are the saved keys.
    owner = one.client.post(
        "/api/v1/tokens", json={"name": "owner", "workspace": "ops", "role": "owner"}
    ).json()["token"]
    folder = tmp_path / "keys"
    result = link(one, two, "--name", "third", "--save-keys", str(folder), from_token=owner)
    assert result.exit_code == 1
    assert "creating ops/third on" in result.stderr and "HTTP 403" in result.stderr
    assert "removed edge/ops on" in result.stderr and "nothing is left half-made" in result.stderr
    no_keys_in(result)
    assert list(configs(one, "ops")) == ["edge"]
    assert list(configs(two, "edge")) == ["cloud"]
    assert list(folder.iterdir()) == []
    # Another server needs its own token: ours is never sent there.
    result = flowlink(
        "link",
        "create",
        "--from-workspace",
        "ops",
        "--to-server",
        two.url,
        "--to-workspace",
        "edge",
        env={"FLOWLINK_SERVER": one.url, "FLOWLINK_TOKEN": one.token},
    )
    assert result.exit_code == 1 and "--to-token" in result.stderr


def test_status_table_and_json(
    two_live_servers: tuple[LiveServer, LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    one, two = two_live_servers
    assert link(one, two, "--sync-interval", "2.5").exit_code == 0
    assert link(one, two, "--reverse", "--name", "back", "--remote-name", "back").exit_code == 0
    env = {"FLOWLINK_SERVER": one.url, "FLOWLINK_TOKEN": one.token}
    # What the linking engine records about a connection (no API sets it), on an answering
    # end nobody connects to, so the running engine leaves it alone.
    lonely = {
        "name": "lonely",
        "own_private_key": keys.generate_key_pair(2048).private_pem,
        "remote_public_key": keys.generate_key_pair(2048).public_pem,
        "enabled": False,
    }
    assert one.client.post("/api/v1/workspaces/ops/sync_config", json=lonely).status_code == 201
    with one.store.write() as session:
        config = session.scalars(select(SyncConfig).where(SyncConfig.name == "lonely")).one()
        config.state = {
            "connected": False,
            "last_exchange_at": "2026-01-02T03:04:05+00:00",
            "last_error": "[ssl] certificate verify failed",
        }

    listed = flowlink("link", "status", "ops", "--json", env=env)
    assert listed.exit_code == 0, listed.stderr
    views = json.loads(listed.stdout)
    assert [v["name"] for v in views] == ["back", "edge", "lonely"]
    by_name = {v["name"]: v for v in views}

    monkeypatch.setattr(common.console, "width", 320)
    wide = flowlink("link", "status", "ops", env=env)
    assert wide.exit_code == 0, wide.stderr
    no_keys_in(wide)
    rows = {line.split()[1]: line for line in wide.stdout.splitlines() if line.startswith("│")}
    assert set(rows) == {"back", "edge", "lonely"}
    assert "controlling" in rows["edge"] and by_name["edge"]["remote_url"] in rows["edge"]
    assert "interval 2.5 s" in rows["edge"]
    assert "answers" in rows["back"] and "immediate" in rows["back"]
    for name, view in by_name.items():
        assert view["own_public_key_fingerprint"] in rows[name]
        assert view["remote_public_key_fingerprints"][0] in rows[name]
        if view.get("outbox_depth") is None:
            assert " - " in rows[name]
    lonely_row = rows["lonely"].split("│")
    assert [cell.strip() for cell in lonely_row[2:10]] == [
        "no",
        "controlled",
        "answers",
        "immediate",
        "disconnected",
        "2026-01-02T03:04:05.000Z",  # a state stored in the old form, served in the new
        str(by_name["lonely"].get("outbox_depth", "-")),
        "[ssl] certificate verify failed",
    ]

    monkeypatch.setattr(common.console, "width", 80)
    narrow = flowlink("link", "status", "ops", "edge", env=env)
    assert narrow.exit_code == 0, narrow.stderr
    assert by_name["edge"]["own_public_key_fingerprint"] in narrow.stdout
    assert "outbox" in narrow.stdout and "back" not in narrow.stdout

    one_json = flowlink("link", "status", "ops", "edge", "--json", env=env)
    assert [v["name"] for v in json.loads(one_json.stdout)] == ["edge"]
    missing = flowlink("link", "status", "ops", "nope", env=env)
    assert missing.exit_code == 1 and "not found" in missing.stderr


@pytest.mark.slow
def test_run_remote_from_the_cli(database_url: str, second_database_url: str) -> None:
    """``flowlink run --remote`` runs the flow in the linked workspace and follows it."""
    servers = [
        start_live_server(make_settings(url, link_refresh=0.2))
        for url in (database_url, second_database_url)
    ]
    try:
        one, two = (server.live for server in servers)
        script = "def handler(system, this, inputs):\n    this.log('ran remotely')\n"
        script += "    return this.success('hi', where=system.config.get('where'))\n"
        for server, slug in ((one, "ops"), (two, "edge")):
            yml = f"name: {slug}\nslug: {slug}\nconfig:\n  value:\n    where: {slug}\n"
            files = {"workspace.yml": yml}
            if slug == "ops":
                files["flows/greet.py"] = script
            response = server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})
            assert response.status_code == 200, response.text
        assert link(one, two).exit_code == 0
        args = ("--server", one.url, "--token", one.token)
        wrong = flowlink("run", "ops", "greet", "--use-remote-flow", *args)
        assert wrong.exit_code != 0 and "--remote" in wrong.stdout + wrong.stderr
        result = flowlink("run", "ops", "greet", "--remote", "edge", "--follow", "--json", *args)
        assert result.exit_code == 0, result.stdout + result.stderr
        final = json.loads(result.stdout[result.stdout.index('{\n  "id"') :])
        assert final["status"] == "success" and final["mirrored"] is True
        assert final["output_value"] == {"where": "edge"}  # it ran there, with edge's config
        assert final["link"]["role"] == "origin"
        logs = one.client.get(f"/api/v1/workspaces/ops/executions/{final['id']}/logs").json()
        assert [entry["line"] for entry in logs["items"]] == ["ran remotely"]
    finally:
        for server in servers:
            server.stop()
