"""Every ``source`` field (docs/events.md, "The envelope") on the events that carry it."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flowlink.store.models import UserSession
from tests.access.helpers import PASSWORD, make_user
from tests.conftest import LiveServer

WORKSPACE = """name: Sources
slug: src
automations:
  on-order:
    flow: child
    when:
      events: [order.created]
  hook:
    flow: child
    public: true
    when:
      endpoint: true
"""
FLOWS = {
    "parent": (
        "def handler(system, this, inputs):\n"
        "    this.emit('order.created', {'n': 1})\n"
        "    this.flow('child')\n"
        "    return this.success('ok')\n"
    ),
    "child": "def handler(system, this, inputs):\n    return this.success('child')\n",
}


@pytest.fixture
def src(live_server: LiveServer) -> LiveServer:
    files = {"workspace.yml": WORKSPACE, **{f"flows/{k}.py": v for k, v in FLOWS.items()}}
    response = live_server.client.post("/api/v1/workspaces/src/apply", json={"files": files})
    assert response.status_code == 200, response.text
    return live_server


def _events(server: LiveServer, correlation_id: str, expected: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        items = server.client.get(
            "/api/v1/workspaces/src/events",
            params={"correlationId": correlation_id, "limit": 1000},
        ).json()["items"]
        ended = [e for e in items if e["type"] == "executions.ended"]
        if len(ended) >= expected:
            return list(reversed(items))
        if time.monotonic() > deadline:
            raise AssertionError([e["type"] for e in items])
        time.sleep(0.1)


def test_api_start_has_http_user_workspace_execution_and_correlation(src: LiveServer) -> None:
    started = src.client.post("/api/v1/workspaces/src/executions", json={"flow": "child"}).json()
    events = _events(src, started["correlation_id"], 1)
    created = next(e for e in events if e["type"] == "executions.created")
    source = created["source"]
    assert source["http"] == {
        "method": "POST",
        "path": "/api/v1/workspaces/src/executions",
        "ip": "127.0.0.1",
    }
    assert source["workspaceSlug"] == "src" and source["workspaceId"]
    assert source["executionId"] == started["id"]
    assert source["correlationId"] == started["correlation_id"]
    assert source["userId"] == started["user_id"] and source["userId"]
    assert "sessionId" not in source  # a token, not a login session
    # Only the request's own event carries the request.
    assert all("http" not in e["source"] for e in events if e["type"] != "executions.created")


def test_login_session_id_on_executions_children_and_emitted_events(src: LiveServer) -> None:
    make_user(src.store, "ann", {"src": "owner"})
    with httpx.Client(base_url=src.url, timeout=30) as browser:
        login = browser.post("/api/v1/auth/login", json={"username": "ann", "password": PASSWORD})
        assert login.status_code == 200, login.text
        response = browser.post(
            "/api/v1/workspaces/src/executions",
            json={"flow": "parent"},
            headers={"X-CSRF-Token": login.json()["csrf_token"]},
        )
        assert response.status_code == 201, response.text
        started = response.json()
    with src.store.read() as session:
        session_id = session.scalars(select(UserSession.id)).one()
    # parent, its child and the automation's run on order.created
    events = _events(src, started["correlation_id"], 3)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_type.setdefault(event["type"], []).append(event)
    own = [
        e
        for t in ("executions.created", "executions.started", "executions.ended")
        for e in by_type[t]
        if not e["source"].get("automationSlug")
    ]
    assert len(own) == 6  # parent and child, three events each
    assert all(e["source"].get("sessionId") == session_id for e in own)
    emitted = by_type["order.created"][0]
    assert emitted["source"]["sessionId"] == session_id
    assert emitted["source"]["executionId"] == started["id"]
    # The automation's run acts as the automation: it names it, not the session.
    automation_run = [e for e in by_type["executions.ended"] if e["source"].get("automationSlug")]
    assert [e["source"]["automationSlug"] for e in automation_run] == ["on-order"]
    triggered = by_type["runtime.interactions.triggered"][0]
    assert triggered["source"]["automationSlug"] == "on-order"
    assert triggered["source"]["triggerDepth"] == 1


def test_webhook_start_has_http_on_executions_created(src: LiveServer) -> None:
    response = src.client.post("/api/v1/workspaces/src/webhooks/hook?async=1", json={"a": 1})
    assert response.status_code == 202, response.text
    execution = src.client.get(f"/api/v1/workspaces/src/executions/{response.json()['id']}")
    events = _events(src, execution.json()["correlation_id"], 1)
    created = next(e for e in events if e["type"] == "executions.created")
    assert created["source"]["http"]["path"] == "/api/v1/workspaces/src/webhooks/hook"
    assert created["source"]["automationSlug"] == "hook"
    ended = next(e for e in events if e["type"] == "executions.ended")
    assert ended["source"]["automationSlug"] == "hook" and "http" not in ended["source"]
