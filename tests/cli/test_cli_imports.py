"""What a client command of ``flowlink`` imports: the CLI only, never the server side.

Each case runs the real command in a fresh interpreter and lists the modules it loaded when
it exits (a start-up budget is measured in bench/cli.py, not here).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flowlink.cli.client import CA_BUNDLE_ENV, ApiError, tls_context
from flowlink.cli.common import RSA_KEY_BITS
from flowlink.linking.keys import DEFAULT_RSA_BITS
from tests.cli.test_cli import cli
from tests.conftest import LiveServer

OK_FLOW = "def handler(system, this, inputs):\n    return this.success('ok')\n"

# Modules the server, the store and the runtime bring; a client command needs none of them.
SERVER_SIDE = ("flowlink.server", "fastapi", "uvicorn", "sqlalchemy", "flowlink.runtime")

# Runs the ``flowlink`` entry point with argv, then prints the loaded modules as JSON at exit
# (also when the command exits with SystemExit, as typer always does).
PROBE = """
import atexit, json, sys
atexit.register(lambda: sys.__stdout__.write("\\nMODULES " + json.dumps(sorted(sys.modules))))
sys.argv = ["flowlink", *sys.argv[1:]]
from flowlink.cli.main import main
main()
"""


def loaded_modules(*args: str, env: dict[str, str] | None = None) -> tuple[list[str], str]:
    """Run ``flowlink ARGS`` in a fresh interpreter: the modules it loaded, and its output."""
    environ = {**os.environ, "FLOWLINK_CONFIG_DIR": "/nonexistent-flowlink-config", **(env or {})}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    output, marker, modules = result.stdout.rpartition("\nMODULES ")
    assert marker, result.stdout
    return json.loads(modules), output


def server_side(modules: list[str]) -> list[str]:
    """The server-side modules (packages and their submodules) among ``modules``."""
    return [m for m in modules if any(m == s or m.startswith(s + ".") for s in SERVER_SIDE)]


@pytest.mark.parametrize(
    "args",
    [["--help"], ["executions", "list", "--help"], ["link", "create", "--help"]],
    ids=["help", "executions-list-help", "link-create-help"],
)
def test_help_imports_no_server_side_module(args: list[str]) -> None:
    modules, output = loaded_modules(*args)
    assert "Usage" in output
    assert "flowlink.cli.main" in modules  # the probe really ran the CLI
    assert server_side(modules) == []
    assert "httpx" not in modules  # no request, no HTTP client
    assert "cryptography" not in modules  # key generation loads it when it runs


def test_executions_list_against_a_live_server_imports_no_server_side_module(
    live_server: LiveServer,
) -> None:
    live_server.client.post(
        "/api/v1/workspaces/imp/apply", json={"files": {"workspace.yml": "name: Imp\nslug: imp\n"}}
    ).raise_for_status()
    env = {"FLOWLINK_SERVER": live_server.url, "FLOWLINK_TOKEN": live_server.token}
    modules, output = loaded_modules("executions", "list", "imp", "--json", env=env)
    assert json.loads(output) == []
    assert "httpx" in modules  # it did talk to the server
    assert server_side(modules) == []
    # Typer's pydantic coercion is only needed for a value to convert ("5" to 5, below).
    assert "pydantic" not in modules


def test_values_to_convert_still_go_through_typer(live_server: LiveServer) -> None:
    live_server.client.post(
        "/api/v1/workspaces/imp/apply",
        json={"files": {"workspace.yml": "name: Imp\nslug: imp\n", "flows/ok.py": OK_FLOW}},
    ).raise_for_status()
    for _ in range(3):
        live_server.client.post(
            "/api/v1/workspaces/imp/executions", json={"flow": "ok", "wait": 30}
        ).raise_for_status()
    two = cli(live_server, "executions", "list", "imp", "--limit", "2", "--json", check=True)
    assert len(json.loads(two.stdout)) == 2
    bad = cli(live_server, "executions", "list", "imp", "--limit", "two")
    assert bad.returncode == 2 and "--limit" in bad.stderr and "integer" in bad.stderr
    missing = cli(live_server, "executions", "list")
    assert missing.returncode == 2 and "WORKSPACE" in missing.stderr.upper()


def test_probe_sees_server_side_imports(database_url: str) -> None:
    # The same probe on a command that opens the store lists them: the check can fail.
    env = {"FLOWLINK_DATABASE_URL": database_url, "FLOWLINK_SECRET_KEY": "test-secret-key"}
    modules, _ = loaded_modules("events", "cleanup", "--dry-run", "--json", env=env)
    assert "sqlalchemy" in server_side(modules)


def test_plain_http_needs_no_tls_context_but_ca_files_are_still_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CA_BUNDLE_ENV, raising=False)
    assert tls_context([], "http://127.0.0.1:8080") is False
    assert tls_context([], "https://flowlink.example") is True
    with pytest.raises(ApiError, match="does not exist"):
        tls_context([str(tmp_path / "missing.pem")], "http://127.0.0.1:8080")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("no certificate here\n")
    assert tls_context([str(not_pem)], "http://127.0.0.1:8080") is False
    with pytest.raises(ApiError, match="not a PEM certificate"):
        tls_context([str(not_pem)], "HTTPS://flowlink.example")


def test_cli_key_size_default_is_the_linking_default() -> None:
    assert RSA_KEY_BITS == DEFAULT_RSA_BITS


def test_store_commands_load_the_store_but_not_the_api(tmp_path: Path) -> None:
    """``flowlink users ...`` works on the store directly: no web framework, no HTTP server."""
    env = {"FLOWLINK_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    modules, output = loaded_modules("users", "list", "--json", env=env)
    assert json.loads(output) == []
    assert "sqlalchemy" in modules  # the probe really opened the store
    assert [m for m in ("flowlink.server", "fastapi", "uvicorn") if m in modules] == []
