"""The flow_api permission matrix: every call a script can make x several roles.

Each ``flow_api`` call must be checked against the execution's role exactly like the API
route that does the same thing. ``FLOW_API`` names that route for every call; a call the
worker answers that is missing from the table fails the test. The main test runs a probe
script as each principal in a real runner, and asks the API the same questions with the same
principal's token: the answers must agree.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowlink import assembly
from flowlink.executions.calls import FlowApiCalls
from flowlink.runtime import flow_api
from flowlink.settings import ServerSettings
from flowlink.store.models import Execution
from tests.access.helpers import user_with_token
from tests.api.test_access_api import denials
from tests.conftest import LiveServer

# call -> the API route that must decide alike; None: a call on the execution itself only
# (its own outputs, its own user), which needs no right beyond having started it.
FLOW_API: dict[str, tuple[str, str] | None] = {
    "execution.get": ("GET", "/executions/{execution}"),
    "execution.wait": ("GET", "/executions/{execution}"),
    "execution.start_child": ("POST", "/executions"),
    "execution.emit": ("POST", "/events"),
    "execution.save": None,
    "setting.get": ("GET", "/settings/{setting}"),
    "setting.exists": ("GET", "/settings/{setting}"),
    "setting.save": ("PUT", "/settings/{setting}"),
    "setting.delete": ("DELETE", "/settings/{setting}"),
    "flow.get": ("GET", "/flows/{flow}"),
    "file.get": ("GET", "/files/{path}"),
    "file.exists": ("GET", "/files/{path}"),
    "file.save": ("PUT", "/files/{path}"),
    "file.delete": ("DELETE", "/files/{path}"),
    "file.list": ("GET", "/files"),
    "user.get_own": ("GET", "/auth/me"),
}

FLOW = "def handler(system, this, inputs):\n    return this.success('ok', n=1)\n"
WORKSPACE_YML = """name: Flow API matrix
slug: fx
roles:
  reporter:
    - {action: execute, subject: executions, conditions: {flow: probe}}
    - {action: execute, subject: executions, conditions: {flow: reports-*}}
    - {action: read, subject: executions, conditions: {flow: reports-*}}
    - {action: read, subject: flows, conditions: {flow: reports-*}}
    - {action: read, subject: settings, conditions: {setting: reports-*}}
    - {action: update, subject: settings, conditions: {setting: reports-*}}
    - {action: delete, subject: settings, conditions: {setting: reports-*}}
    - {action: create, subject: events, conditions: {type: reports.*}}
    - {action: read, subject: files, conditions: {path: reports/*}}
    - {action: update, subject: files, conditions: {path: reports/*}}
    - {action: delete, subject: files, conditions: {path: reports/*}}
  creator:
    - {action: execute, subject: executions, conditions: {flow: probe}}
    - {action: create, subject: settings}
    - {action: create, subject: files}
  bare:
    - {action: execute, subject: executions, conditions: {flow: probe}}
"""
# The probe runs each call on an allowed-looking target (reports-*) and on another one, and
# returns A (allowed), D (PermissionDeniedError) or E: and the error, per call and target.
PROBE = """import flow_api

def handler(system, this, inputs):
    t = inputs["targets"]
    probes = {
        "execution.get": lambda x: flow_api.Execution(t["execution"][x]).get("output_value"),
        "execution.wait": lambda x: flow_api.Execution(t["execution"][x]).wait(),
        "execution.start_child": lambda x: this.flow(t["flow"][x], wait=False),
        "execution.emit": lambda x: this.emit(t["event"][x], {}),
        "execution.save": lambda x: this.save({"saved": x}),
        "setting.get": lambda x: system.setting(t["setting"][x]).get(),
        "setting.exists": lambda x: system.setting(t["setting"][x]).exists(),
        "setting.save": lambda x: system.setting(t["setting"][x]).save(1),
        "setting.create": lambda x: system.setting(t["new_setting"][x]).save(1),
        "setting.delete": lambda x: system.setting(t["doomed"][x]).delete(),
        "flow.get": lambda x: system.flow(t["flow"][x]).get("script"),
        "file.get": lambda x: system.file(t["file"][x]).get(),
        "file.exists": lambda x: system.file(t["file"][x]).exists(),
        "file.save": lambda x: system.file(t["file"][x]).save(b"1"),
        "file.create": lambda x: system.file(t["new_file"][x]).save(b"1"),
        "file.delete": lambda x: system.file(t["doomed_file"][x]).delete(),
        "file.list": lambda x: system.files(),
        "user.get_own": lambda x: system.get_own_user().get("name"),
    }
    results = {}
    for name, probe in probes.items():
        for x in ("in", "out"):
            try:
                probe(x)
                results[f"{name} {x}"] = "A"
            except flow_api.PermissionDeniedError:
                results[f"{name} {x}"] = "D"
            except Exception as exc:
                results[f"{name} {x}"] = f"E: {type(exc).__name__}: {exc}"
    return this.success("probed", results=results)
"""
PRINCIPALS = ("owner", "editor", "operator", "reporter", "creator", "bare")


def surface() -> list[str]:
    """Every call the worker answers and every call flow_api.py makes."""
    execution = Execution(id="x", workspace_id="w", principal=None, user_id=None)
    calls = FlowApiCalls(
        None,  # type: ignore[arg-type]
        ServerSettings(),
        execution=execution,
        workspace_slug="w",
        cancelled=None,  # type: ignore[arg-type]
        deadline=0.0,
        release_slot=lambda: None,
        retake_slot=lambda: None,
        hooks=assembly.FLOW_HOOKS,
    )
    source = Path(flow_api.__file__).read_text()
    made = re.findall(r"\.call\(\s*\"([a-z_]+\.[a-z_]+)\"", source)
    assert made, "no flow_api calls found in flow_api.py"
    return sorted({*calls.methods(), *made})


def test_every_flow_api_call_has_a_row() -> None:
    missing = [method for method in surface() if method not in FLOW_API]
    assert not missing, f"flow_api calls without a row in FLOW_API: {missing}"


class World:
    """Workspace ``fx``: flows, settings and ended executions in and out of ``reports-*``."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.tokens: dict[str, str] = {}
        self.executions: dict[str, str] = {}

    def build(self) -> None:
        client = self.server.client
        files = {
            "workspace.yml": WORKSPACE_YML,
            "flows/probe.py": PROBE,
            "flows/reports-daily.py": FLOW,
            "flows/other.py": FLOW,
        }
        assert client.post("/api/v1/workspaces/fx/apply", json={"files": files}).is_success
        for flow in ("reports-daily", "other"):
            run = client.post("/api/v1/workspaces/fx/executions", json={"flow": flow, "wait": 30})
            assert run.json()["status"] == "success", run.text
            self.executions[flow] = run.json()["id"]
        for name in ("reports-a", "other-a"):
            client.put(f"/api/v1/workspaces/fx/settings/{name}", json={"value": 0})
        for path in ("reports/a.txt", "other/a.txt"):
            assert client.put(f"/api/v1/workspaces/fx/files/{path}", content=b"0").is_success
        for principal in PRINCIPALS:
            self.tokens[principal] = user_with_token(
                self.server.store, f"u-{principal}", "fx", principal
            )

    def targets(self, principal: str, via: str) -> dict[str, dict[str, str]]:
        """The in/out targets of one principal's probe (``via``: flow or api)."""
        for prefix in ("reports", "other"):
            self.server.client.put(
                f"/api/v1/workspaces/fx/settings/{prefix}-del-{principal}-{via}",
                json={"value": 0},
            )
            self.server.client.put(
                f"/api/v1/workspaces/fx/files/{prefix}/del-{principal}-{via}.txt", content=b"0"
            )
        return {
            "execution": {"in": self.executions["reports-daily"], "out": self.executions["other"]},
            "flow": {"in": "reports-daily", "out": "other"},
            "event": {"in": "reports.done", "out": "other.done"},
            "setting": {"in": "reports-a", "out": "other-a"},
            "new_setting": {
                "in": f"reports-new-{principal}-{via}",
                "out": f"other-new-{principal}-{via}",
            },
            "doomed": {
                "in": f"reports-del-{principal}-{via}",
                "out": f"other-del-{principal}-{via}",
            },
            "file": {"in": "reports/a.txt", "out": "other/a.txt"},
            "new_file": {
                "in": f"reports/new-{principal}-{via}.txt",
                "out": f"other/new-{principal}-{via}.txt",
            },
            "doomed_file": {
                "in": f"reports/del-{principal}-{via}.txt",
                "out": f"other/del-{principal}-{via}.txt",
            },
        }

    def probe(self, principal: str) -> dict[str, str]:
        """Run the probe flow as ``principal``; its A/D/E answer per call and target."""
        with self._client(principal) as client:
            run = client.post(
                "/api/v1/workspaces/fx/executions",
                json={
                    "flow": "probe",
                    "inputs": {"targets": self.targets(principal, "flow")},
                    "wait": 60,
                },
            )
        assert run.status_code == 201, run.text
        record = run.json()
        assert record["status"] == "success", record
        results: dict[str, str] = record["output_value"]["results"]
        return results

    def ask_api(self, principal: str) -> dict[str, str]:
        """The same questions asked through the API routes of ``FLOW_API``."""
        targets = self.targets(principal, "api")
        answers: dict[str, str] = {}
        probes: dict[str, tuple[str, str, str, Any]] = {
            "execution.get": ("GET", "/executions/{}", "execution", None),
            "execution.wait": ("GET", "/executions/{}", "execution", None),
            "execution.start_child": ("POST", "/executions", "flow", "flow"),
            "execution.emit": ("POST", "/events", "event", "type"),
            "setting.get": ("GET", "/settings/{}", "setting", None),
            "setting.exists": ("GET", "/settings/{}", "setting", None),
            "setting.save": ("PUT", "/settings/{}", "setting", "value"),
            "setting.create": ("PUT", "/settings/{}", "new_setting", "value"),
            "setting.delete": ("DELETE", "/settings/{}", "doomed", None),
            "flow.get": ("GET", "/flows/{}", "flow", None),
            "file.get": ("GET", "/files/{}", "file", None),
            "file.exists": ("GET", "/files/{}", "file", None),
            "file.save": ("PUT", "/files/{}", "file", None),
            "file.create": ("PUT", "/files/{}", "new_file", None),
            "file.delete": ("DELETE", "/files/{}", "doomed_file", None),
            "file.list": ("GET", "/files", "file", None),
            "user.get_own": ("GET", "/auth/me", "flow", None),
        }
        with self._client(principal) as client:
            for name, (method, path, kind, field) in probes.items():
                for x in ("in", "out"):
                    target = targets[kind][x]
                    url = "/api/v1" + path if path == "/auth/me" else "/api/v1/workspaces/fx"
                    if path != "/auth/me":
                        url += path.format(target) if "{}" in path else path
                    body: Any = None
                    if field == "value":
                        body = {"value": 1}
                    elif field == "type":
                        body = {"type": target, "payload": {}}
                    elif field == "flow":
                        body = {"flow": target}
                    response = client.request(method, url, json=body)
                    if response.is_success:
                        answers[f"{name} {x}"] = "A"
                    elif response.status_code == 403:
                        answers[f"{name} {x}"] = "D"
                    else:
                        answers[f"{name} {x}"] = f"E: {response.status_code} {response.text}"
        return answers

    def _client(self, principal: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {self.tokens[principal]}"},
            timeout=90,
        )


def test_flow_api_calls_are_checked_like_their_routes(live_server: LiveServer) -> None:
    world = World(live_server)
    world.build()
    failures = []
    seen: dict[str, set[str]] = {}
    for principal in PRINCIPALS:
        script = world.probe(principal)
        api = world.ask_api(principal)
        for key, got in sorted(script.items()):
            seen.setdefault(key.split()[0], set()).add(got)
            call = key.split()[0]
            # execution.save writes the execution's own outputs: nothing to decide.
            expected = "A" if call == "execution.save" else api[key]
            if got != expected:
                failures.append(f"{key} as {principal}: flow_api {got}, API {expected}")
    assert not failures, "\n".join(failures)
    # The matrix must exercise both answers wherever a right is needed.
    for call, route in FLOW_API.items():
        if route is None or route == ("GET", "/auth/me"):
            continue
        assert seen[call] == {"A", "D"}, (call, seen[call])
    assert seen["setting.create"] == {"A", "D"}
    assert seen["file.create"] == {"A", "D"}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wait_on_an_unreadable_execution_is_denied(live_server: LiveServer) -> None:
    """The reported case: read only ``reports-*`` and ``execution.wait`` on another flow."""
    world = World(live_server)
    world.build()
    results = world.probe("reporter")
    assert results["execution.wait out"] == "D"
    assert results["execution.get out"] == "D"
    assert results["execution.wait in"] == "A"
    denied = [d["payload"] for d in denials(live_server)]
    assert any(
        d["subject"] == "executions" and d["attributes"] == {"flow": "other"} for d in denied
    ), denied
