"""Every ``flowlink`` resource command as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import signal
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
import typer.main
from typer.testing import CliRunner

from flowlink import __version__
from flowlink.access.service import init_admin
from flowlink.cli.main import app
from flowlink.server import build_server, serve
from flowlink.settings import ServerSettings
from tests.access.helpers import user_with_token
from tests.cli.test_cli import cli
from tests.conftest import LiveServer, free_port, make_settings
from tests.linking.servers import make_tls

WORKSPACE = "name: Commands\nslug: cmd\n"
FLOWS = {
    "hello": "def handler(system, this, inputs):\n    return this.success('hi there', n=7)\n",
    "slow": "import time\ndef handler(system, this, inputs):\n    time.sleep(60)\n",
    "quiet": "def handler(system, this, inputs):\n    this.save(output_value={'x': 1})\n",
}


@pytest.fixture
def cmd(live_server: LiveServer) -> LiveServer:
    files = {"workspace.yml": WORKSPACE, **{f"flows/{k}.py": v for k, v in FLOWS.items()}}
    files["settings.yml"] = "plain: {a: 1}\ntoken: !secret t0ken-Value-99\n"
    response = live_server.client.post("/api/v1/workspaces/cmd/apply", json={"files": files})
    assert response.status_code == 200, response.text
    return live_server


@pytest.mark.slow
def test_version_and_help_without_type_placeholders() -> None:
    assert cli(None, "--version", check=True).stdout.strip() == f"flowlink {__version__}"
    runner = CliRunner()
    group = typer.main.get_command(app)
    paths: list[list[str]] = [[]]
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        paths += [[name, sub] for sub in getattr(command, "commands", {})]
    assert ["link", "update"] in paths and ["settings", "set"] in paths
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
        assert result.exit_code == 0, (path, result.output)
        for placeholder in ("<bool>", "<str>", "<float", "<int", "<list", "<path>  "):
            assert placeholder not in result.output, (path, result.output)


@pytest.mark.slow
def test_workspaces_flows_and_settings_commands(cmd: LiveServer) -> None:
    listed = cli(cmd, "workspaces", "list", check=True).stdout
    assert "cmd" in listed and "Commands" in listed
    assert [w["slug"] for w in json.loads(cli(cmd, "workspaces", "list", "--json").stdout)] == [
        "cmd"
    ]
    shown = cli(cmd, "workspaces", "show", "cmd", check=True).stdout
    assert "Commands" in shown and "version" in shown
    assert json.loads(cli(cmd, "workspaces", "show", "cmd", "--json").stdout)["slug"] == "cmd"

    assert "hello" in cli(cmd, "flows", "list", "cmd", check=True).stdout
    names = [f["name"] for f in json.loads(cli(cmd, "flows", "list", "cmd", "--json").stdout)]
    assert names == ["hello", "quiet", "slow"]
    assert cli(cmd, "flows", "show", "cmd", "hello", check=True).stdout == FLOWS["hello"]
    assert json.loads(cli(cmd, "flows", "show", "cmd", "hello", "--json").stdout)["name"] == "hello"
    assert "deleted flow slow" in cli(cmd, "flows", "delete", "cmd", "slow", "--yes").stdout
    assert "not found" in cli(cmd, "flows", "show", "cmd", "slow").stderr

    settings = cli(cmd, "settings", "list", "cmd", check=True).stdout
    assert "plain" in settings and "secret" in settings and "t0ken-Value-99" not in settings
    assert json.loads(cli(cmd, "settings", "show", "cmd", "plain", check=True).stdout) == {"a": 1}
    shown = cli(cmd, "settings", "show", "cmd", "token", check=True).stdout
    assert "********" in shown and "t0ken" not in shown
    as_json = json.loads(cli(cmd, "settings", "list", "cmd", "--json").stdout)
    assert {s["name"]: s["secret"] for s in as_json} == {"plain": False, "token": True}
    # A secret from stdin: never on the command line, never printed back.
    result = cli(cmd, "settings", "set", "cmd", "api", "-", "--secret", input_text="n3w-S3cret")
    assert result.returncode == 0, result.stderr
    assert "set secret setting api" in result.stdout
    assert "n3w-S3cret" not in cli(cmd, "settings", "list", "cmd", "--json").stdout
    cli(cmd, "settings", "set", "cmd", "count", "5", check=True)
    assert json.loads(cli(cmd, "settings", "show", "cmd", "count").stdout) == 5
    assert "deleted setting count" in cli(cmd, "settings", "delete", "cmd", "count", "-y").stdout
    # A viewer may list but not set.
    viewer = user_with_token(cmd.store, "viewer", "cmd", "viewer")
    denied = cli(cmd, "settings", "set", "cmd", "x", "1", "--token", viewer)
    assert denied.returncode == 1 and "may not" in denied.stderr

    assert "deleted workspace cmd" in cli(cmd, "workspaces", "delete", "cmd", "--yes").stdout
    assert json.loads(cli(cmd, "workspaces", "list", "--json").stdout) == []


@pytest.mark.slow
def test_executions_show_list_in_80_columns_and_cancel(cmd: LiveServer) -> None:
    ran = json.loads(cli(cmd, "run", "cmd", "hello", "--follow", "--json", check=True).stdout)
    quiet = json.loads(cli(cmd, "run", "cmd", "quiet", "--follow", "--json", check=True).stdout)
    shown = cli(cmd, "executions", "show", "cmd", ran["id"], check=True).stdout
    assert "message  hi there" in shown
    assert 'outputs  {"n": 7}' in shown
    assert "return this.success('hi there', n=7)" in shown  # the script
    quiet_shown = cli(cmd, "executions", "show", "cmd", quiet["id"], check=True).stdout
    assert "message  -" in quiet_shown and "None" not in quiet_shown
    as_json = json.loads(cli(cmd, "executions", "show", "cmd", ran["id"], "--json").stdout)
    assert as_json["script"] == FLOWS["hello"] and as_json["message"] == "hi there"

    started = json.loads(cli(cmd, "run", "cmd", "slow", "--json", check=True).stdout)
    time.sleep(0.5)
    cancelled = cli(cmd, "executions", "cancel", "cmd", started["id"], check=True).stdout
    assert cancelled.strip() == f"{started['id']} cancelled"

    listed = cli(cmd, "executions", "list", "cmd", env={"COLUMNS": "80"}, check=True).stdout
    lines = listed.splitlines()
    assert all(len(line) <= 80 for line in lines), listed
    assert "…" not in listed
    for execution_id, status in ((ran["id"], "success"), (started["id"], "cancelled")):
        row = next(line for line in lines if line.startswith(execution_id))
        assert f" {status} " in row, row
    wide = cli(cmd, "executions", "list", "cmd", env={"COLUMNS": "160"}, check=True).stdout
    assert "hi there" in wide


@pytest.mark.slow
def test_link_list_show_update_disable_enable_delete(live_server: LiveServer) -> None:
    for slug in ("la", "lb"):
        assert live_server.client.post("/api/v1/workspaces", json={"slug": slug}).status_code == 201
    cli(live_server, "link", "create", "--from-workspace", "la", "--to-workspace", "lb", check=True)
    listed = cli(live_server, "link", "list", "la", check=True).stdout
    assert "lb" in listed and "controlling" in listed
    views = json.loads(cli(live_server, "link", "list", "la", "--json").stdout)
    assert [v["name"] for v in views] == ["lb"]
    shown = cli(live_server, "link", "show", "la", "lb", check=True).stdout
    assert "own fingerprint" in shown and "SHA256:" in shown and "PRIVATE" not in shown
    assert json.loads(cli(live_server, "link", "show", "la", "lb", "--json").stdout)["enabled"]

    updated = cli(
        live_server, "link", "update", "la", "lb", "--sync-interval", "7", "--json", check=True
    )
    assert json.loads(updated.stdout)["sync_interval"] == 7
    immediate = cli(live_server, "link", "update", "la", "lb", "--immediate", "--json", check=True)
    assert json.loads(immediate.stdout)["sync_interval"] is None
    assert "nothing to change" in cli(live_server, "link", "update", "la", "lb").stderr
    assert "la/lb disabled" in cli(live_server, "link", "disable", "la", "lb", check=True).stdout
    assert not json.loads(cli(live_server, "link", "show", "la", "lb", "--json").stdout)["enabled"]
    assert "la/lb enabled" in cli(live_server, "link", "enable", "la", "lb", check=True).stdout
    deleted = cli(live_server, "link", "delete", "la", "lb", "--yes", check=True).stdout
    assert "deleted sync config la/lb" in deleted
    assert json.loads(cli(live_server, "link", "list", "la", "--json").stdout) == []


def test_ca_certificate_option_and_env_for_a_private_ca(tmp_path: Path, database_url: str) -> None:
    ca, cert, key = make_tls(tmp_path)
    settings: ServerSettings = make_settings(database_url)
    port = free_port()
    running = build_server(
        settings, port=port, with_worker=False, tls_cert=str(cert), tls_key=str(key)
    )
    with running.context.store.write() as session:
        token = init_admin(session).token
    thread = threading.Thread(target=serve, args=(running,), daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{port}"
    try:
        context = ssl.create_default_context(cafile=str(ca))
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health", verify=context).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        env = {"FLOWLINK_SERVER": url, "FLOWLINK_TOKEN": token}
        untrusted = cli(None, "workspaces", "list", env=env)
        assert untrusted.returncode == 1
        assert "--ca-certificate" in untrusted.stderr and "FLOWLINK_CA_BUNDLE" in untrusted.stderr
        trusted = cli(None, "--ca-certificate", str(ca), "workspaces", "list", "--json", env=env)
        assert trusted.returncode == 0, trusted.stderr
        assert json.loads(trusted.stdout) == []
        by_env = cli(None, "workspaces", "list", env={**env, "FLOWLINK_CA_BUNDLE": str(ca)})
        assert by_env.returncode == 0, by_env.stderr
        missing = cli(None, "workspaces", "list", env={**env, "FLOWLINK_CA_BUNDLE": "/nope.pem"})
        assert missing.returncode == 1 and "/nope.pem" in missing.stderr
    finally:
        running.server.handle_exit(signal.SIGTERM, None)
        thread.join(timeout=30)
