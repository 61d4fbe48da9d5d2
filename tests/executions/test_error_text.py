"""Error text of a failed child on a real server: no repeated parts, public class names."""

from __future__ import annotations

from tests.conftest import LiveServer

CHILD = "import flow_api\n\ndef handler(system, this, inputs):\n    raise ValueError('boom')\n"
# this.flow('child') is on line 4 too, as in the report that showed "(line 4) (line 4)".
PARENT = "import flow_api\n\ndef handler(system, this, inputs):\n    this.flow('child')\n"


def test_failed_child_message_and_traceback(live_server: LiveServer) -> None:
    client = live_server.client
    assert client.post("/api/v1/workspaces", json={"slug": "err"}).status_code == 201
    for name, script in (("child", CHILD), ("parent", PARENT)):
        response = client.put(f"/api/v1/workspaces/err/flows/{name}", json={"script": script})
        assert response.status_code == 201, response.text
    started = client.post("/api/v1/workspaces/err/executions", json={"flow": "parent"}).json()
    parent = live_server.wait_for("err", started["id"])
    assert parent["status"] == "error"
    message = str(parent["message"])
    assert message.startswith("DependencyFailedError: child execution ")
    assert message.endswith(
        "(child) ended with error at line 4 of child: ValueError: boom (line 4)"
    ), message
    assert "(line 4) (line 4)" not in message
    logs = client.get(f"/api/v1/workspaces/err/executions/{started['id']}/logs").text
    assert "flow_api.DependencyFailedError: child execution" in logs
    assert "flowlink.runtime" not in logs and "flowlink" not in message
