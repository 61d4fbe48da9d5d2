"""Automations on native events, on a real server: they fire once per cause and never loop."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import LiveServer

WORKSPACE = """name: Native
slug: nat
automations:
  audit:
    flow: audit
    when:
      events: [executions.ended]
  on-failure:
    flow: audit
    when:
      events: [executions.failed]
  on-settings:
    flow: touch
    when:
      events: [settings.updated]
  on-update:
    flow: audit
    when:
      events: [workspaces.updated, error]
"""
FLOWS = {
    # The audit flow itself ends (an executions.ended event): it must not hear itself.
    "audit": (
        "def handler(system, this, inputs):\n"
        "    return this.success('seen', type=inputs['type'],"
        " id=inputs['payload'].get('id'), status=inputs['payload'].get('status'))\n"
    ),
    "work": "def handler(system, this, inputs):\n    return this.success('done')\n",
    "boom": "def handler(system, this, inputs):\n    raise ValueError('boom')\n",
    # Writes a setting: a settings.updated event caused by its own run.
    "touch": (
        "def handler(system, this, inputs):\n"
        "    system.setting('touched').save(inputs['payload']['name'])\n"
        "    return this.success('touched')\n"
    ),
}


def _files(workspace: str = WORKSPACE) -> dict[str, str]:
    return {"workspace.yml": workspace, **{f"flows/{k}.py": v for k, v in FLOWS.items()}}


def _executions(server: LiveServer) -> list[dict[str, Any]]:
    body = server.client.get("/api/v1/workspaces/nat/executions", params={"limit": 500}).json()
    return list(body["items"])


def _settle(server: LiveServer, check: Callable[[list[dict[str, Any]]], bool]) -> list[Any]:
    """Wait until ``check`` holds and nothing is queued or running, then a little more."""
    deadline = time.monotonic() + 30
    while True:
        items = _executions(server)
        idle = all(i["status"] in ("success", "error", "cancelled") for i in items)
        if idle and check(items):
            time.sleep(1.0)  # anything a loop would start shows up by now
            again = _executions(server)
            if len(again) == len(items):
                return again
        if time.monotonic() > deadline:
            raise AssertionError(f"did not settle: {[(i['name'], i['status']) for i in items]}")
        time.sleep(0.1)


def _run(server: LiveServer, flow: str) -> str:
    response = server.client.post("/api/v1/workspaces/nat/executions", json={"flow": flow})
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


@pytest.fixture
def nat(live_server: LiveServer) -> LiveServer:
    response = live_server.client.post("/api/v1/workspaces/nat/apply", json={"files": _files()})
    assert response.status_code == 200, response.text
    return live_server


def _by_automation(items: list[dict[str, Any]], slug: str) -> list[dict[str, Any]]:
    return [i for i in items if (i.get("trigger") or {}).get("automation") == slug]


def test_executions_ended_fires_once_per_run_and_does_not_loop(nat: LiveServer) -> None:
    first, second = _run(nat, "work"), _run(nat, "work")
    items = _settle(nat, lambda items: len(_by_automation(items, "audit")) >= 2)
    audits = _by_automation(items, "audit")
    assert sorted(a["output_value"]["id"] for a in audits) == sorted([first, second])
    assert all(a["output_value"]["type"] == "executions.ended" for a in audits)
    assert all(a["trigger"]["eventType"] == "executions.ended" for a in audits)
    assert all(a["trigger"]["chain"] == ["audit"] for a in audits)
    # The audit runs' own endings started nothing, and no failure was heard.
    assert len(items) == 4
    assert _by_automation(items, "on-failure") == []
    # The run that caused it shares its correlation with the automation's run.
    run = next(i for i in items if i["id"] == first)
    audit = next(a for a in audits if a["output_value"]["id"] == first)
    assert audit["correlation_id"] == run["correlation_id"]


def test_executions_failed_fires_only_for_errors(nat: LiveServer) -> None:
    failed = _run(nat, "boom")
    items = _settle(nat, lambda items: len(_by_automation(items, "on-failure")) >= 1)
    on_failure = _by_automation(items, "on-failure")
    assert [a["output_value"]["id"] for a in on_failure] == [failed]
    assert on_failure[0]["output_value"]["status"] == "error"
    # audit heard the failed run and on-failure's run (another automation's); the audit of
    # on-failure's run has both automations in its chain, so nothing hears its end.
    audits = _by_automation(items, "audit")
    assert sorted(a["output_value"]["id"] for a in audits) == sorted([failed, on_failure[0]["id"]])
    assert sorted(len(a["trigger"]["chain"]) for a in audits) == [1, 2]
    assert len(items) == 4


def test_settings_updated_by_its_own_run_does_not_retrigger(nat: LiveServer) -> None:
    response = nat.client.put("/api/v1/workspaces/nat/settings/colour", json={"value": "red"})
    assert response.status_code == 200
    items = _settle(nat, lambda items: len(_by_automation(items, "on-settings")) >= 1)
    touches = _by_automation(items, "on-settings")
    assert len(touches) == 1 and touches[0]["status"] == "success"
    touched = nat.client.get("/api/v1/workspaces/nat/settings/touched").json()
    assert touched["value"] == "colour"


def test_workspaces_updated_and_error_events_trigger(nat: LiveServer) -> None:
    changed = WORKSPACE.replace("name: Native", "name: Native 2")
    response = nat.client.post("/api/v1/workspaces/nat/apply", json={"files": _files(changed)})
    assert response.status_code == 200
    # A webhook call without its key records an ``error`` event.
    hooked = changed + "  hook:\n    flow: work\n    when:\n      endpoint: true\n"
    response = nat.client.post("/api/v1/workspaces/nat/apply", json={"files": _files(hooked)})
    assert response.status_code == 200
    assert nat.client.post("/api/v1/workspaces/nat/webhooks/hook").status_code == 401
    items = _settle(nat, lambda items: len(_by_automation(items, "on-update")) >= 3)
    heard = sorted(a["output_value"]["type"] for a in _by_automation(items, "on-update"))
    assert heard == ["error", "workspaces.updated", "workspaces.updated"]


@pytest.mark.parametrize(
    "event", ["executions.created", "runtime.interactions.triggered", "workspaces.created", "x.*"]
)
def test_apply_rejects_native_events_that_cannot_be_listened_to(
    live_server: LiveServer, event: str
) -> None:
    workspace = WORKSPACE.replace("events: [executions.ended]", f"events: ['{event}']")
    response = live_server.client.post(
        "/api/v1/workspaces/nat/apply", json={"files": _files(workspace)}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"]["line"] == 7
    assert f"cannot listen to the native event '{event}'" in error["message"]
    assert "executions.ended, executions.failed" in error["message"]
