"""The ``flowlink`` command line as a user runs it: a real process against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import LiveServer

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]


def cli(
    server: LiveServer | None,
    *args: str,
    env: dict[str, str] | None = None,
    check: bool = False,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config", **(env or {})}
    if server is not None:
        environ.update({"FLOWLINK_SERVER": server.url, "FLOWLINK_TOKEN": server.token})
    result = subprocess.run(
        [*FLOWLINK, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        input=input_text,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "flows").mkdir(parents=True)
    (ws / "workspace.yml").write_text("name: CLI\nslug: cli-test\n")
    (ws / "flows" / "hello.py").write_text(
        "def handler(system, this, inputs):\n"
        "    this.log('hello', inputs.get('name'))\n"
        "    return this.success('all done', n=inputs.get('n'))\n"
    )
    (ws / "flows" / "fails.py").write_text(
        "def handler(system, this, inputs):\n    raise RuntimeError('boom')\n"
    )
    (ws / "flows" / "slow.py").write_text(
        "import time\ndef handler(system, this, inputs):\n    time.sleep(60)\n"
    )
    return ws


@pytest.mark.slow
def test_apply_run_follow_list_show_export(
    live_server: LiveServer, folder: Path, tmp_path: Path
) -> None:
    out = cli(live_server, "apply", str(folder), check=True)
    assert "cli-test created" in out.stdout
    assert "unchanged" in cli(live_server, "apply", str(folder), check=True).stdout

    run = cli(
        live_server,
        "run",
        "cli-test",
        "hello",
        "--input",
        "name=Ada",
        "--input",
        "n=3",
        "--follow",
        check=True,
    )
    assert "hello Ada" in run.stdout
    assert "success" in run.stderr

    as_json = cli(
        live_server,
        "run",
        "cli-test",
        "hello",
        "--input-json",
        '{"n": 5}',
        "--follow",
        "--json",
        check=True,
    )
    record = json.loads(as_json.stdout)
    assert record["status"] == "success" and record["output_value"] == {"n": 5}

    failed = cli(live_server, "run", "cli-test", "fails", "--follow")
    assert failed.returncode == 1
    assert "boom" in failed.stderr

    listing = json.loads(
        cli(live_server, "executions", "list", "cli-test", "--json", check=True).stdout
    )
    assert len(listing) == 3
    shown = cli(live_server, "executions", "show", "cli-test", record["id"], check=True)
    assert record["id"] in shown.stdout and "success" in shown.stdout

    target = tmp_path / "exported"
    cli(live_server, "export", "cli-test", str(target), check=True)
    assert (target / "workspace.yml").read_text() == (folder / "workspace.yml").read_text()
    assert (target / "flows" / "hello.py").read_text() == (
        folder / "flows" / "hello.py"
    ).read_text()


def test_cancel_from_the_cli(live_server: LiveServer, folder: Path) -> None:
    cli(live_server, "apply", str(folder), check=True)
    started = json.loads(cli(live_server, "run", "cli-test", "slow", "--json", check=True).stdout)
    cancelled = cli(live_server, "executions", "cancel", "cli-test", started["id"], check=True)
    assert started["id"] in cancelled.stdout
    assert live_server.wait_for("cli-test", started["id"])["status"] == "cancelled"


def test_bad_folder_reports_file_and_line(live_server: LiveServer, folder: Path) -> None:
    (folder / "workspace.yml").write_text("name: CLI\nslug: cli-test\nautomations: [\n")
    result = cli(live_server, "apply", str(folder))
    assert result.returncode == 1
    assert "workspace.yml:" in result.stderr


def test_errors_are_clear(live_server: LiveServer, folder: Path) -> None:
    result = cli(live_server, "run", "nope", "hello")
    assert result.returncode == 1 and "workspace 'nope' not found" in result.stderr
    result = cli(live_server, "run", "cli-test", "hello", "--input", "novalue")
    assert result.returncode == 1 and "key=value" in result.stderr
    result = cli(None, "executions", "list", "x", env={"FLOWLINK_SERVER": "http://127.0.0.1:9"})
    assert result.returncode == 1 and "cannot reach" in result.stderr
    result = cli(None, "executions", "list", "x", env={"FLOWLINK_SERVER": live_server.url})
    assert result.returncode == 1 and "FLOWLINK_TOKEN" in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_init_prints_a_working_login_once(database_url: str, tmp_path: Path) -> None:
    env = {"FLOWLINK_DATABASE_URL": database_url, "FLOWLINK_CONFIG_DIR": str(tmp_path / "cfg")}
    first = cli(None, "init", "--json", env=env, check=True)
    data = json.loads(first.stdout)
    assert set(data) == {"user", "password", "token"}
    saved = json.loads((tmp_path / "cfg" / "credentials.json").read_text())
    assert saved["token"] == data["token"]
    assert oct((tmp_path / "cfg" / "credentials.json").stat().st_mode & 0o777) == "0o600"
    again = cli(None, "init", env=env)
    assert again.returncode == 1 and "already" in again.stderr


def test_cli_client_reads_saved_credentials_without_importing_the_server(tmp_path: Path) -> None:
    config = tmp_path / "cfg"
    config.mkdir()
    (config / "credentials.json").write_text(
        json.dumps({"server": "http://127.0.0.1:9", "token": "fl_saved"})
    )
    code = (
        "import sys\n"
        "from flowlink.cli.client import Client\n"
        "client = Client()\n"
        "loaded = [name in sys.modules for name in ('flowlink.server', 'uvicorn')]\n"
        "print(client.server, client.token, *loaded)\n"
    )
    env = {**os.environ, "FLOWLINK_CONFIG_DIR": str(config)}
    env.pop("FLOWLINK_SERVER", None)
    env.pop("FLOWLINK_TOKEN", None)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["http://127.0.0.1:9", "fl_saved", "False", "False"]
