"""Secret settings and environment config on a real server: nobody reads them but flows."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select

from flowlink.store.models import Setting
from tests.access.helpers import user_with_token
from tests.conftest import LiveServer

SECRET = "s3cr3t-Value-4711"
WORKSPACE = "name: Secrets\nslug: sec\nconfig:\n  value:\n    API_URL: https://api.example.com\n"
FLOWS = {
    # Reads the secret, prints and logs it, returns a digest so the test knows it was read.
    "use": (
        "def handler(system, this, inputs):\n"
        "    token = system.setting('api_token').get('value')\n"
        "    print('token is', token)\n"
        "    this.log('again:', token)\n"
        "    return this.success('used', length=len(token), "
        "login=system.config.get('LOGIN_URL'), env=system.config.get('TOKEN'))\n"
    ),
    "fail": (
        "def handler(system, this, inputs):\n"
        "    raise RuntimeError('bad ' + system.setting('api_token').get('value'))\n"
    ),
    "rotate": (
        "def handler(system, this, inputs):\n"
        "    system.setting('api_token').save('rotated-' + inputs['v'])\n"
        "    return this.success('ok')\n"
    ),
}


def _files(settings: str) -> dict[str, str]:
    files = {"workspace.yml": WORKSPACE, "settings.yml": settings}
    files.update({f"flows/{name}.py": script for name, script in FLOWS.items()})
    return files


def _client(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )


def _everything(client: httpx.Client, ws: str, execution_ids: list[str]) -> str:
    """Every route a reader could use, concatenated: the secret must be in none of them."""
    parts = [
        client.get(f"/api/v1/workspaces/{ws}").text,
        client.get(f"/api/v1/workspaces/{ws}/settings").text,
        client.get(f"/api/v1/workspaces/{ws}/settings/api_token").text,
        client.get(f"/api/v1/workspaces/{ws}/export").text,
        client.get(f"/api/v1/workspaces/{ws}/events", params={"limit": 1000}).text,
        client.get(f"/api/v1/workspaces/{ws}/events", params={"text": SECRET}).text,
        client.get(f"/api/v1/workspaces/{ws}/executions").text,
    ]
    for execution_id in execution_ids:
        parts.append(client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}").text)
        parts.append(client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}/logs").text)
    return "\n".join(parts)


@pytest.fixture
def secrets_ws(live_server: LiveServer) -> Iterator[LiveServer]:
    response = live_server.client.post(
        "/api/v1/workspaces/sec/apply",
        json={"files": _files(f"plain: 1\napi_token: !secret {SECRET}\n")},
    )
    assert response.status_code == 200, response.text
    yield live_server


def _run(server: LiveServer, flow: str, inputs: dict[str, str] | None = None) -> dict[str, object]:
    response = server.client.post(
        "/api/v1/workspaces/sec/executions", json={"flow": flow, "inputs": inputs or {}}
    )
    assert response.status_code in (200, 201, 202), response.text
    return server.wait_for("sec", str(response.json()["id"]))


def test_secret_is_encrypted_at_rest_and_readable_by_flows_only(secrets_ws: LiveServer) -> None:
    with secrets_ws.store.read() as session:
        row = session.scalar(select(Setting).where(Setting.name == "api_token"))
        assert row is not None and row.secret is True
        assert SECRET not in json.dumps(row.value)
    used = _run(secrets_ws, "use")
    assert used["status"] == "success", used
    assert used["output_value"]["length"] == len(SECRET)  # type: ignore[index]
    failed = _run(secrets_ws, "fail")
    assert failed["status"] == "error"
    assert SECRET not in str(failed["message"]) and "[secret]" in str(failed["message"])
    logs = secrets_ws.client.get(f"/api/v1/workspaces/sec/executions/{used['id']}/logs").text
    assert "token is [secret]" in logs and "again: [secret]" in logs
    view = secrets_ws.client.get("/api/v1/workspaces/sec/settings/api_token").json()
    assert view["secret"] is True and view["value"] == "********"
    exported = secrets_ws.client.get("/api/v1/workspaces/sec/export").json()["files"]
    assert "api_token: !secret ''" in exported["settings.yml"]
    assert "plain: 1" in exported["settings.yml"]


@pytest.mark.parametrize("role", ["viewer", "owner"])
def test_no_role_reads_a_secret_by_any_route(secrets_ws: LiveServer, role: str) -> None:
    ids = [str(_run(secrets_ws, "use")["id"]), str(_run(secrets_ws, "fail")["id"])]
    token = user_with_token(secrets_ws.store, f"{role}-user", "sec", role)
    with _client(secrets_ws, token) as client:
        seen = _everything(client, "sec", ids)
    assert "api_token" in seen  # the routes answered
    assert SECRET not in seen
    # ... nor the admin's
    assert SECRET not in _everything(secrets_ws.client, "sec", ids)


def test_managing_secrets_is_a_role_permission(secrets_ws: LiveServer) -> None:
    editor = user_with_token(secrets_ws.store, "ed", "sec", "editor")
    owner = user_with_token(secrets_ws.store, "own", "sec", "owner")
    url = "/api/v1/workspaces/sec/settings"
    with _client(secrets_ws, editor) as client:
        assert client.put(f"{url}/api_token", json={"value": "x"}).status_code == 403
        assert client.delete(f"{url}/api_token").status_code == 403
        assert client.put(f"{url}/new", json={"value": "x", "secret": True}).status_code == 403
        assert client.put(f"{url}/plain", json={"value": 2}).status_code == 200
    with _client(secrets_ws, owner) as client:
        replaced = client.put(f"{url}/api_token", json={"value": "new-secret-value"})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json() == {**replaced.json(), "secret": True, "value": "********"}
        made = client.put(f"{url}/other", json={"value": {"k": "v"}, "secret": True})
        assert made.status_code == 200 and made.json()["value"] == "********"
    used = _run(secrets_ws, "use")
    assert used["output_value"]["length"] == len("new-secret-value")  # type: ignore[index]
    # A flow started by an editor may read the secret but not replace it.
    with _client(secrets_ws, editor) as client:
        started = client.post(
            "/api/v1/workspaces/sec/executions", json={"flow": "rotate", "inputs": {"v": "1"}}
        ).json()
    rotated = secrets_ws.wait_for("sec", started["id"])
    assert rotated["status"] == "error" and "manage settings" in str(rotated["message"])
    # The events record the change, never the value.
    events = secrets_ws.client.get(
        "/api/v1/workspaces/sec/events", params={"types": "settings.updated"}
    ).json()["items"]
    assert any(e["payload"].get("secret") for e in events)
    assert "new-secret-value" not in json.dumps(events)


def test_applying_an_export_keeps_the_secret(secrets_ws: LiveServer) -> None:
    exported = secrets_ws.client.get("/api/v1/workspaces/sec/export").json()["files"]
    again = secrets_ws.client.post("/api/v1/workspaces/sec/apply", json={"files": exported})
    assert again.status_code == 200, again.text
    assert again.json()["changed"] is False
    assert _run(secrets_ws, "use")["output_value"]["length"] == len(SECRET)  # type: ignore[index]


def test_environment_config_is_masked_for_everyone_but_flows(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = WORKSPACE + '    LOGIN_URL: "{{config.API_URL}}/login?t={{ config.TOKEN }}"\n'
    monkeypatch.setenv("WORKSPACE_CONFIG_" + "sec_TOKEN", SECRET)
    files = {**_files(f"api_token: !secret {SECRET}\n"), "workspace.yml": workspace}
    response = live_server.client.post("/api/v1/workspaces/sec/apply", json={"files": files})
    assert response.status_code == 200, response.text
    assert SECRET not in response.text
    viewer = user_with_token(live_server.store, "v", "sec", "viewer")
    with _client(live_server, viewer) as client:
        config = client.get("/api/v1/workspaces/sec").json()["config"]
    assert config == {
        "API_URL": "https://api.example.com",
        "LOGIN_URL": "********",
        "TOKEN": "********",
    }
    used = _run(live_server, "use")
    assert used["output_value"]["env"] == SECRET  # type: ignore[index]
    assert used["output_value"]["login"] == f"https://api.example.com/login?t={SECRET}"  # type: ignore[index]
