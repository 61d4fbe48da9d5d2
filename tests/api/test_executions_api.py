"""Flows and executions through a real server: the seed scripts, children, errors, limits."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from sqlalchemy import event

from tests.conftest import LiveServer

SEED = """import flow_api

def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    return this.success('all done')
"""
SEED_LEGACY = """def handler(system, this):
    return this.success('all done')
"""
WORKSPACE_YML = """name: API test
slug: api-test
config:
  value:
    API_URL: https://api.example.com
    LOGIN_URL: "{{config.API_URL}}/login"
"""


def apply(server: LiveServer, files: dict[str, str]) -> dict[str, Any]:
    response = server.client.post("/api/v1/workspaces/api-test/apply", json={"files": files})
    assert response.status_code == 200, response.text
    return dict(response.json())


def start(server: LiveServer, **body: Any) -> dict[str, Any]:
    response = server.client.post("/api/v1/workspaces/api-test/executions", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def run_script(server: LiveServer, script: str, **body: Any) -> dict[str, Any]:
    execution = start(server, script=script, **body)
    return server.wait_for("api-test", execution["id"], timeout=60)


@pytest.fixture
def ws(live_server: LiveServer) -> LiveServer:
    apply(
        live_server,
        {
            "workspace.yml": WORKSPACE_YML,
            "flows/seed.py": SEED,
            "flows/seed_legacy.py": SEED_LEGACY,
            "flows/echo.py": (
                "def handler(system, this, inputs):\n"
                "    this.log('got', inputs)\n"
                "    print('printed line')\n"
                "    this.save(message='halfway', output_value={'half': True})\n"
                "    return this.success('echoed', echo=inputs, login=system.config['LOGIN_URL'])\n"
            ),
            "flows/legacy_inputs.py": (
                "def handler(system, this):\n"
                "    return this.success('ok', got=this.get('input_value'))\n"
            ),
            "flows/child.py": (
                "def handler(system, this, inputs):\n"
                "    if inputs.get('fail'):\n"
                "        raise ValueError('child failed on purpose')\n"
                "    return this.success('child ok', doubled=inputs['n'] * 2)\n"
            ),
            "flows/parent.py": (
                "import flow_api\n"
                "def handler(system, this, inputs):\n"
                "    child = this.flow('child', {'n': inputs['n']})\n"
                "    result = child.get('output_value')['doubled']\n"
                "    try:\n"
                "        this.flow('child', {'fail': True})\n"
                "    except flow_api.DependencyFailedError as error:\n"
                "        this.log('caught:', error)\n"
                "    return this.success('parent ok', result=result)\n"
            ),
            "flows/nest.py": (
                "def handler(system, this, inputs):\n"
                "    depth = inputs['depth']\n"
                "    if depth == 0:\n"
                "        return this.success('leaf', leaves=1)\n"
                "    a = this.flow('nest', {'depth': depth - 1}, wait=False)\n"
                "    b = this.flow('nest', {'depth': depth - 1}, wait=False)\n"
                "    total = a.wait().get('output_value')['leaves']\n"
                "    total += b.wait().get('output_value')['leaves']\n"
                "    return this.success('node', leaves=total)\n"
            ),
            "flows/settings_user.py": (
                "import flow_api\n"
                "def handler(system, this, inputs):\n"
                "    s = system.setting('counter')\n"
                "    before = s.exists()\n"
                "    s.save(value={'n': 1})\n"
                "    value = s.get('value')\n"
                "    s.delete()\n"
                "    try:\n"
                "        system.setting('counter').get('value')\n"
                "        missing = False\n"
                "    except flow_api.ResourceNotFoundError:\n"
                "        missing = True\n"
                "    script = system.flow('seed').get('script')\n"
                "    user = system.get_own_user().get('name')\n"
                "    return this.success('ok', before=before, value=value, missing=missing,\n"
                "                        script_has_handler='def handler' in script, user=user)\n"
            ),
        },
    )
    return live_server


@pytest.mark.parametrize("flow", ["seed", "seed_legacy"])
def test_seed_scripts_run_unchanged(ws: LiveServer, flow: str) -> None:
    record = ws.wait_for("api-test", start(ws, flow=flow)["id"])
    assert record["status"] == "success", record
    assert record["message"] == "all done"
    assert record["script"] in (SEED, SEED_LEGACY)
    assert record["started_at"] and record["ended_at"]


def test_inputs_outputs_logs_and_config(ws: LiveServer) -> None:
    record = ws.wait_for("api-test", start(ws, flow="echo", inputs={"a": 1})["id"])
    assert record["status"] == "success", record
    assert record["output_value"] == {
        "half": True,
        "echo": {"a": 1},
        "login": "https://api.example.com/login",
    }
    assert record["input_value"] == {"a": 1}
    logs = ws.client.get(f"/api/v1/workspaces/api-test/executions/{record['id']}/logs").json()
    lines = [item["line"] for item in logs["items"]]
    assert "got {'a': 1}" in lines
    assert "printed line" in lines


def test_legacy_signature_reads_inputs_with_get(ws: LiveServer) -> None:
    record = ws.wait_for("api-test", start(ws, flow="legacy_inputs", inputs={"x": 2})["id"])
    assert record["output_value"] == {"got": {"x": 2}}


def test_children_parent_links_and_dependency_failure(ws: LiveServer) -> None:
    record = ws.wait_for("api-test", start(ws, flow="parent", inputs={"n": 21})["id"])
    assert record["status"] == "success", record
    assert record["output_value"] == {"result": 42}
    assert len(record["children"]) == 2
    children = [
        ws.client.get(f"/api/v1/workspaces/api-test/executions/{c}").json()
        for c in record["children"]
    ]
    assert [c["status"] for c in children] == ["success", "error"]
    assert all(c["parent_id"] == record["id"] for c in children)
    assert all(c["correlation_id"] == record["correlation_id"] for c in children)
    assert "child failed on purpose" in children[1]["message"]
    logs = ws.client.get(f"/api/v1/workspaces/api-test/executions/{record['id']}/logs").json()
    assert any("caught:" in item["line"] for item in logs["items"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "server_settings",
    [pytest.param("concurrency-1", id="concurrency-1")],
    indirect=True,
)
def test_deep_nesting_does_not_deadlock_the_pool(ws: LiveServer) -> None:
    # 2**5 = 32 leaves, 63 executions, at most 1 running at a time: waiting parents must give
    # their slot back or this deadlocks.
    record = ws.wait_for("api-test", start(ws, flow="nest", inputs={"depth": 5})["id"], timeout=120)
    assert record["status"] == "success", record
    assert record["output_value"] == {"leaves": 32}


def test_settings_flows_and_user_from_a_script(ws: LiveServer) -> None:
    record = ws.wait_for("api-test", start(ws, flow="settings_user")["id"])
    assert record["status"] == "success", record
    assert record["output_value"] == {
        "before": False,
        "value": {"n": 1},
        "missing": True,
        "script_has_handler": True,
        "user": "admin",
    }


def test_unknown_workspace_and_flow_are_404(ws: LiveServer) -> None:
    response = ws.client.post("/api/v1/workspaces/nope/executions", json={"flow": "seed"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = ws.client.post("/api/v1/workspaces/api-test/executions", json={"flow": "nope"})
    assert response.status_code == 404
    assert "nope" in response.json()["error"]["message"]
    response = ws.client.get("/api/v1/workspaces/api-test/executions/does-not-exist")
    assert response.status_code == 404


def test_malformed_bodies_are_422_naming_the_field(ws: LiveServer) -> None:
    response = ws.client.post(
        "/api/v1/workspaces/api-test/executions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 422
    response = ws.client.post(
        "/api/v1/workspaces/api-test/executions", json={"flow": "seed", "inputs": [1, 2]}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["details"]["errors"][0]["field"] == "inputs"
    assert "inputs" in error["message"]
    response = ws.client.post(
        "/api/v1/workspaces/api-test/executions", json={"flow": "seed", "max_runtime": -1}
    )
    assert response.status_code == 422
    assert "max_runtime" in response.json()["error"]["message"]


def test_missing_or_wrong_token_is_401(ws: LiveServer) -> None:
    import httpx

    response = httpx.get(f"{ws.url}/api/v1/workspaces")
    assert response.status_code == 401
    response = httpx.get(f"{ws.url}/api/v1/workspaces", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    ("script", "kind", "needle"),
    [
        ("def handler(system, this, inputs)\n    pass\n", "syntax_error", "line 1"),
        (
            "def handler(system, this, inputs):\n    x = 1\n    return 1 / 0\n",
            "exception",
            "line 3",
        ),
        ("import sys\ndef handler(system, this, inputs):\n    sys.exit(3)\n", "sys_exit", "3"),
        ("def handler(system, this, inputs):\n    this.error('nope')\n", "flow_error", "nope"),
    ],
    ids=["syntax", "exception", "sys-exit", "this-error"],
)
def test_script_failures_end_as_error_saying_which(
    ws: LiveServer, script: str, kind: str | None, needle: str
) -> None:
    record = run_script(ws, script)
    assert record["status"] == "error", record
    assert record["error_kind"] == kind
    assert needle in record["message"]
    # The worker keeps serving.
    assert ws.wait_for("api-test", start(ws, flow="seed")["id"])["status"] == "success"


def test_infinite_loop_is_killed_at_max_runtime(ws: LiveServer) -> None:
    began = time.monotonic()
    record = run_script(
        ws, "def handler(system, this, inputs):\n    while True:\n        pass\n", max_runtime=1.5
    )
    assert record["status"] == "error"
    assert record["error_kind"] == "timeout"
    assert "maximum runtime" in record["message"]
    assert time.monotonic() - began < 20


@pytest.mark.parametrize(
    "server_settings", [pytest.param("memory-256", id="memory-256")], indirect=True
)
def test_memory_bomb_is_stopped_at_the_limit(ws: LiveServer) -> None:
    record = run_script(ws, "def handler(system, this, inputs):\n    x = bytearray(10**10)\n")
    assert record["status"] == "error"
    assert record["error_kind"] == "memory_limit"
    assert "memory limit" in record["message"]
    assert ws.wait_for("api-test", start(ws, flow="seed")["id"])["status"] == "success"


def test_fork_bomb_is_stopped(ws: LiveServer) -> None:
    record = run_script(
        ws, "import os\ndef handler(system, this, inputs):\n    while True:\n        os.fork()\n"
    )
    assert record["status"] == "error", record
    assert record["error_kind"] == "process_limit"
    assert "process limit" in record["message"]
    assert ws.wait_for("api-test", start(ws, flow="seed")["id"])["status"] == "success"


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> str:
    """A secret in the server's environment, set before the server (and its runners) start."""
    monkeypatch.setenv("FLOWLINK_TEST_CANARY", "canary-secret-value")
    return "canary-secret-value"


def test_script_cannot_read_store_or_server_environment(canary: str, ws: LiveServer) -> None:
    db_path = ws.store.url.split(":///", 1)[-1] if ws.store.dialect == "sqlite" else ""
    server_environ = f"/proc/{os.getpid()}/environ"
    script = (
        "import os\n"
        "def handler(system, this, inputs):\n"
        "    found = {}\n"
        f"    for path in [{db_path!r}, {server_environ!r}]:\n"
        "        if not path:\n"
        "            continue\n"
        "        try:\n"
        "            with open(path, 'rb') as f:\n"
        "                found[path] = f.read(100000).decode('latin-1')\n"
        "        except Exception as e:\n"
        "            found[path] = 'ERR ' + type(e).__name__\n"
        "    return this.success('looked', found=found, env=dict(os.environ))\n"
    )
    record = run_script(ws, script)
    assert record["status"] == "success", record
    found = record["output_value"]["found"]
    assert found[server_environ].startswith("ERR"), found[server_environ][:200]
    if db_path:
        assert "SQLite format" not in found[db_path]
    env = record["output_value"]["env"]
    assert "FLOWLINK_TEST_CANARY" not in env
    assert not any(key.startswith("FLOWLINK_") for key in env), env
    dumped = repr(record["output_value"])
    assert canary not in dumped and "test-secret-key" not in dumped


def test_cancel_a_running_execution(ws: LiveServer) -> None:
    execution = start(
        ws, script="import time\ndef handler(system, this, inputs):\n    time.sleep(60)\n"
    )
    deadline = time.monotonic() + 20
    while (
        ws.client.get(f"/api/v1/workspaces/api-test/executions/{execution['id']}").json()["status"]
        != "running"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    began = time.monotonic()
    response = ws.client.post(f"/api/v1/workspaces/api-test/executions/{execution['id']}/cancel")
    assert response.status_code == 200
    record = ws.wait_for("api-test", execution["id"])
    assert record["status"] == "cancelled"
    assert time.monotonic() - began < 5
    again = ws.client.post(f"/api/v1/workspaces/api-test/executions/{execution['id']}/cancel")
    assert again.status_code == 409


def test_wait_option_returns_the_ended_execution(ws: LiveServer) -> None:
    record = start(ws, flow="seed", wait=30)
    assert record["status"] == "success"


def test_list_filters_and_pages(ws: LiveServer) -> None:
    ids = [start(ws, flow="seed")["id"] for _ in range(5)]
    for execution_id in ids:
        ws.wait_for("api-test", execution_id)
    page = ws.client.get(
        "/api/v1/workspaces/api-test/executions", params={"flow": "seed", "limit": 3}
    ).json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = ws.client.get(
        "/api/v1/workspaces/api-test/executions",
        params={"flow": "seed", "limit": 3, "before": page["next_cursor"]},
    ).json()
    listed = [item["id"] for item in page["items"] + rest["items"]]
    assert sorted(listed) == sorted(ids)
    bad = ws.client.get("/api/v1/workspaces/api-test/executions", params={"status": "weird"})
    assert bad.status_code == 422


def test_a_batch_of_starts_reads_its_flows_in_one_query(ws: LiveServer) -> None:
    # A query per start would be a round trip each on PostgreSQL, in the batch's transaction.
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(" ".join(statement.split()).upper())

    batch = {"executions": [{"flow": "seed"}, {"flow": "echo"}, {"flow": "seed"}] * 3}
    event.listen(ws.store.engine, "before_cursor_execute", note)
    try:
        response = ws.client.post("/api/v1/workspaces/api-test/executions/batch", json=batch)
    finally:
        event.remove(ws.store.engine, "before_cursor_execute", note)
    assert response.status_code == 201, response.text
    assert len([s for s in seen if "FROM FLOWS" in s]) == 1, seen
    items = response.json()["items"]
    assert [item["name"] for item in items] == ["seed", "echo", "seed"] * 3
    for item in items:
        assert ws.wait_for("api-test", item["id"])["status"] == "success"


def test_batch_start_is_all_or_nothing(ws: LiveServer) -> None:
    batch = {"executions": [{"flow": "seed"}, {"flow": "echo", "inputs": {"k": 1}}]}
    response = ws.client.post("/api/v1/workspaces/api-test/executions/batch", json=batch)
    assert response.status_code == 201, response.text
    items = response.json()["items"]
    assert [item["name"] for item in items] == ["seed", "echo"]
    for item in items:
        assert ws.wait_for("api-test", item["id"])["status"] == "success"
    before = len(ws.client.get("/api/v1/workspaces/api-test/executions").json()["items"])
    bad = {"executions": [{"flow": "seed"}, {"flow": "seed"}, {"flow": "missing"}]}
    response = ws.client.post("/api/v1/workspaces/api-test/executions/batch", json=bad)
    assert response.status_code == 404
    error = response.json()["error"]
    assert error["message"].startswith("executions[2]:") and error["details"]["index"] == 2
    after = len(ws.client.get("/api/v1/workspaces/api-test/executions").json()["items"])
    assert after == before
    empty = ws.client.post("/api/v1/workspaces/api-test/executions/batch", json={"executions": []})
    assert empty.status_code == 422
