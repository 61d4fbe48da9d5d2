"""Workspaces as code through a real server: apply, idempotency, errors, export, settings."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import LiveServer

WORKSPACE_EXAMPLE = """name: MyConfiguredWorkspace
slug: test
config:
  value:
    API_URL: https://api.example.com
    LOGIN_URL: "{{config.API_URL}}/login"
    headers:
      apiKey: someAPIKey
  schema: {}            # apps only: JSON-schema-like description of config
automations:
  greet-new-user:
    flow: greet
    when:
      events: [user.signedup]
      schedules: ["*/15 * * * *"]
      endpoint: true      # POST /api/v1/workspaces/test/webhooks/greet-new-user
customDomains: [www.example.org]
"""
GREET = "def handler(system, this, inputs):\n    return this.success('hi')\n"


def apply(server: LiveServer, slug: str, files: dict[str, str]) -> Any:
    return server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})


def test_design_example_loads_as_written(live_server: LiveServer) -> None:
    response = apply(
        live_server, "test", {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["created"] is True
    workspace = live_server.client.get("/api/v1/workspaces/test").json()
    assert workspace["config"]["LOGIN_URL"] == "https://api.example.com/login"
    assert workspace["config"]["headers"] == {"apiKey": "someAPIKey"}
    assert workspace["custom_domains"] == ["www.example.org"]
    assert workspace["automations"]["greet-new-user"]["when"]["events"] == ["user.signedup"]


def test_apply_is_idempotent(live_server: LiveServer) -> None:
    files = {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
    first = apply(live_server, "test", files).json()
    second = apply(live_server, "test", files).json()
    assert first["created"] and not second["created"]
    assert second["changed"] is False
    assert second["workspace"]["version"] == first["workspace"]["version"]


def test_bad_yaml_names_file_and_line_and_changes_nothing(live_server: LiveServer) -> None:
    good = {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
    assert apply(live_server, "test", good).status_code == 200
    before = live_server.client.get("/api/v1/workspaces/test/export").json()
    broken = WORKSPACE_EXAMPLE.replace("    flow: greet\n", "    flow: greet\n    bogus: [\n")
    response = apply(live_server, "test", {**good, "workspace.yml": broken})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"]["file"] == "workspace.yml"
    assert isinstance(error["details"]["line"], int)
    unknown = WORKSPACE_EXAMPLE.replace("    flow: greet\n", "    flow: greet\n    colour: red\n")
    response = apply(live_server, "test", {**good, "workspace.yml": unknown})
    assert response.status_code == 422
    assert response.json()["error"]["details"]["line"] == 13
    assert "colour" in response.json()["error"]["message"]
    bad_script = {**good, "flows/extra.py": "def handler(:\n"}
    response = apply(live_server, "test", bad_script)
    assert response.status_code == 422
    assert response.json()["error"]["details"]["file"] == "flows/extra.py"
    assert live_server.client.get("/api/v1/workspaces/test/export").json() == before


def test_missing_template_key_is_named(live_server: LiveServer) -> None:
    yml = "name: T\nslug: test\nconfig:\n  value:\n    A: '{{config.MISSING}}'\n"
    response = apply(live_server, "test", {"workspace.yml": yml})
    assert response.status_code == 422
    assert "MISSING" in response.json()["error"]["message"]
    assert live_server.client.get("/api/v1/workspaces/test").status_code == 404


def test_environment_override_and_precedence(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WORKSPACE_CONFIG_test_API_URL", "https://from-env.example.com")
    monkeypatch.setenv("WORKSPACE_CONFIG_test_EXTRA", "from-env")
    yml = (
        "name: T\nslug: test\nconfig:\n  value:\n"
        "    API_URL: https://from-yaml.example.com\n    USE: '{{config.EXTRA}}/x'\n"
    )
    assert apply(live_server, "test", {"workspace.yml": yml}).status_code == 200
    config = live_server.client.get("/api/v1/workspaces/test").json()["config"]
    assert config["API_URL"] == "https://from-yaml.example.com"
    # Values from the environment (and templates using them) are masked; flows see them.
    assert config["EXTRA"] == "********"
    assert config["USE"] == "********"


def test_slug_mismatch_is_rejected(live_server: LiveServer) -> None:
    response = apply(
        live_server, "other", {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "slug"


def test_export_round_trip_and_flow_pruning(live_server: LiveServer) -> None:
    files = {
        "workspace.yml": WORKSPACE_EXAMPLE,
        "flows/greet.py": GREET,
        "flows/other.py": GREET,
        "settings.yml": "limit: 5\n",
    }
    assert apply(live_server, "test", files).status_code == 200
    exported = live_server.client.get("/api/v1/workspaces/test/export").json()["files"]
    assert exported["workspace.yml"] == WORKSPACE_EXAMPLE
    assert exported["flows/greet.py"] == GREET
    assert "limit" in exported["settings.yml"]
    del files["flows/other.py"]
    result = apply(live_server, "test", files).json()
    assert result["changes"]["flows"] == ["-other"]
    flows = live_server.client.get("/api/v1/workspaces/test/flows").json()["items"]
    assert [f["name"] for f in flows] == ["greet"]


def test_settings_yml_is_initial_only(live_server: LiveServer) -> None:
    files = {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET, "settings.yml": "n: 1\n"}
    assert apply(live_server, "test", files).status_code == 200
    live_server.client.put("/api/v1/workspaces/test/settings/n", json={"value": 7})
    assert apply(live_server, "test", files).status_code == 200
    assert live_server.client.get("/api/v1/workspaces/test/settings/n").json()["value"] == 7


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/api/v1/workspaces/test/flows/new", {"script": GREET}, 201),
        ("PUT", "/api/v1/workspaces/test/flows/bad", {"script": "def (:"}, 422),
        ("PUT", "/api/v1/workspaces/test/flows/bad name", {"script": GREET}, 422),
        ("GET", "/api/v1/workspaces/test/flows/missing", None, 404),
        ("DELETE", "/api/v1/workspaces/test/flows/greet", None, 204),
        ("PUT", "/api/v1/workspaces/test/settings/s1", {"value": {"a": [1]}}, 200),
        ("PUT", "/api/v1/workspaces/test/settings/s1", {}, 422),
        ("GET", "/api/v1/workspaces/test/settings/missing", None, 404),
        ("POST", "/api/v1/workspaces", {"slug": "Bad Slug"}, 422),
        ("POST", "/api/v1/workspaces", {"slug": "test"}, 409),
        ("POST", "/api/v1/workspaces", {"slug": "fresh"}, 201),
    ],
)
def test_flow_setting_and_workspace_crud(
    live_server: LiveServer, method: str, path: str, body: Any, status: int
) -> None:
    assert (
        apply(
            live_server, "test", {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
        ).status_code
        == 200
    )
    response = live_server.client.request(method, path, json=body)
    assert response.status_code == status, response.text
    if status >= 400:
        assert set(response.json()["error"]) == {"code", "message", "details"}


def test_delete_workspace(live_server: LiveServer) -> None:
    assert (
        apply(
            live_server, "test", {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET}
        ).status_code
        == 200
    )
    assert live_server.client.delete("/api/v1/workspaces/test").status_code == 204
    assert live_server.client.get("/api/v1/workspaces/test").status_code == 404


def test_openapi_and_health(live_server: LiveServer) -> None:
    import httpx

    assert httpx.get(f"{live_server.url}/api/v1/health").json()["status"] == "ok"
    spec = httpx.get(f"{live_server.url}/openapi.json").json()
    assert "/api/v1/workspaces/{ws}/executions" in spec["paths"]
    metrics = live_server.client.get("/api/v1/metrics").text
    assert "flowlink_executions" in metrics
