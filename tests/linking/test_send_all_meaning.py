"""Both meanings of "Send all executions" on a real server, with a link between two workspaces."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.linking.conftest import KeyMaker, add_link_end

ECHO = "def handler(system, this, inputs):\n    return this.success('echo')\n"


def link_workspaces(server: LiveServer, make_key: KeyMaker, **controlling: Any) -> None:
    """Workspaces sa (controlling, config to-b) and sb (controlled, config from-a), linked on
    one live server, with a flow ``echo`` in sa."""
    for slug in ("sa", "sb"):
        assert server.client.post("/api/v1/workspaces", json={"slug": slug}).status_code == 201
    assert (
        server.client.put("/api/v1/workspaces/sa/flows/echo", json={"script": ECHO}).status_code
        == 201
    )
    key_a, key_b = make_key("openssl-genpkey"), make_key("ssh-keygen-pem")
    remote_url = f"{server.url}/api/v1/workspaces/sb/sync_config/from-a/sync"
    add_link_end(server.client, "sa", "to-b", key_a, key_b, remote_url=remote_url, **controlling)
    add_link_end(server.client, "sb", "from-a", key_b, key_a)
    time.sleep(2.5)  # the link engine picks new configs up within FLOWLINK_LINK_REFRESH


def _ids(server: LiveServer, ws: str) -> list[str]:
    items = server.client.get(f"/api/v1/workspaces/{ws}/executions").json()["items"]
    return [str(i["id"]) for i in items]


def _run(server: LiveServer, ws: str, **body: Any) -> dict[str, Any]:
    response = server.client.post(f"/api/v1/workspaces/{ws}/executions", json=body)
    assert response.status_code == 201, response.text
    return server.wait_for(ws, str(response.json()["id"]), timeout=60)


@pytest.mark.slow
def test_older_meaning_hides_linked_runs_unless_set(
    live_server: LiveServer, make_key: KeyMaker
) -> None:
    link_workspaces(live_server, make_key, send_all_executions_meaning="list")
    view = live_server.client.get("/api/v1/workspaces/sa/sync_config/to-b").json()
    assert view["send_all_executions_meaning"] == "list" and not view["send_all_executions"]
    remote = _run(live_server, "sa", flow="echo", remote="to-b")
    assert remote["status"] == "success" and remote["mirrored"] is True
    # Unset: the run started in sb through the link does not show in sa's list ...
    assert remote["id"] not in _ids(live_server, "sa")
    assert len(_ids(live_server, "sb")) == 1  # ... the controlled side lists its run
    # Set: it shows up.
    patched = live_server.client.patch(
        "/api/v1/workspaces/sa/sync_config/to-b", json={"send_all_executions": True}
    )
    assert patched.status_code == 200, patched.text
    assert remote["id"] in _ids(live_server, "sa")
    # In this meaning the option mirrors nothing to the controlled workspace.
    local = _run(live_server, "sa", flow="echo")
    time.sleep(2.0)
    assert local["id"] in _ids(live_server, "sa")
    assert len(_ids(live_server, "sb")) == 1


def test_v8_meaning_is_the_default_and_mirrors_every_execution(
    live_server: LiveServer, make_key: KeyMaker
) -> None:
    link_workspaces(live_server, make_key, send_all_executions=True)
    view = live_server.client.get("/api/v1/workspaces/sa/sync_config/to-b").json()
    assert view["send_all_executions_meaning"] == "mirror"
    local = _run(live_server, "sa", flow="echo")
    remote = _run(live_server, "sa", flow="echo", remote="to-b")
    assert {local["id"], remote["id"]} <= set(_ids(live_server, "sa"))
    deadline = time.monotonic() + 30
    while True:
        copies = live_server.client.get("/api/v1/workspaces/sb/executions").json()["items"]
        mirrors = [c for c in copies if (c.get("trigger") or {}).get("type") == "mirror"]
        if mirrors:
            break
        assert time.monotonic() < deadline, copies
        time.sleep(0.2)
    assert mirrors[0]["trigger"]["originExecutionId"] == local["id"]


def test_unknown_meaning_is_422(live_server: LiveServer, make_key: KeyMaker) -> None:
    link_workspaces(live_server, make_key)
    response = live_server.client.patch(
        "/api/v1/workspaces/sa/sync_config/to-b", json={"send_all_executions_meaning": "all"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["details"]["field"] == "send_all_executions_meaning"
