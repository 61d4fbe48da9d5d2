"""``flowlink users`` on the store and ``flowlink tokens`` over the API, as real processes."""

from __future__ import annotations

import json

import pytest

from tests.cli.test_cli import cli
from tests.conftest import LiveServer


def login(server: LiveServer, username: str, password: str) -> int:
    response = server.client.post(
        "/api/v1/auth/login", json={"username": username, "password": password}
    )
    return response.status_code


@pytest.mark.slow
def test_users_create_list_disable_enable_reset(live_server: LiveServer) -> None:
    env = {"FLOWLINK_DATABASE_URL": live_server.store.url}
    live_server.client.post("/api/v1/workspaces", json={"slug": "team"})
    created = cli(None, "users", "create", "maria", "--role", "team=operator", "--json", env=env)
    assert created.returncode == 0, created.stderr
    user = json.loads(created.stdout)
    password = user["password"]
    assert user["memberships"] == [{"workspace": "team", "role": "operator"}]
    assert login(live_server, "maria", password) == 200

    listed = json.loads(cli(None, "users", "list", "--json", env=env, check=True).stdout)
    assert {u["username"] for u in listed} == {"admin", "maria"}
    assert "password_hash" not in str(listed)
    table = cli(None, "users", "list", env=env, check=True).stdout
    assert "maria" in table and "team=operator" in table

    cli(None, "users", "disable", "maria", env=env, check=True)
    assert login(live_server, "maria", password) == 401
    cli(None, "users", "enable", "maria", env=env, check=True)
    assert login(live_server, "maria", password) == 200

    reset = cli(None, "users", "reset-password", "maria", "--json", env=env, check=True)
    new_password = json.loads(reset.stdout)["password"]
    assert login(live_server, "maria", password) == 401
    assert login(live_server, "maria", new_password) == 200

    duplicate = cli(None, "users", "create", "maria", env=env)
    assert duplicate.returncode == 1 and "already exists" in duplicate.stderr
    unknown = cli(None, "users", "disable", "nobody", env=env)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    bad_role = cli(None, "users", "grant", "maria", "team", "chief", env=env)
    assert bad_role.returncode == 1 and "unknown role 'chief'" in bad_role.stderr
    cli(None, "users", "grant", "maria", "team", "editor", env=env, check=True)


@pytest.mark.slow
def test_tokens_create_list_revoke_through_the_api(live_server: LiveServer) -> None:
    live_server.client.post("/api/v1/workspaces", json={"slug": "team"})
    created = cli(
        live_server,
        "tokens",
        "create",
        "deploy",
        "--workspace",
        "team",
        "--role",
        "operator",
        "--expires-days",
        "7",
        "--json",
        check=True,
    )
    token = json.loads(created.stdout)
    assert token["token"].startswith("fl_") and token["expires_at"]
    listed = cli(live_server, "tokens", "list", "--json", check=True).stdout
    assert "deploy" in listed and token["token"] not in listed
    scoped = live_server.client.get(
        "/api/v1/workspaces/team/executions",
        headers={"Authorization": f"Bearer {token['token']}"},
    )
    assert scoped.status_code == 200
    cli(live_server, "tokens", "revoke", token["id"], check=True)
    revoked = live_server.client.get(
        "/api/v1/workspaces/team", headers={"Authorization": f"Bearer {token['token']}"}
    )
    assert revoked.status_code == 401
    table = cli(live_server, "tokens", "list", "--all", check=True).stdout
    assert "revoked" in table
    above = cli(live_server, "tokens", "create", "x", "--workspace", "team", "--role", "boss")
    assert above.returncode == 1 and "unknown role 'boss'" in above.stderr
