"""A run started through a link reads the files of the workspace it runs in."""

from __future__ import annotations

from tests.conftest import LiveServer
from tests.linking.conftest import KeyMaker
from tests.linking.test_send_all_meaning import link_workspaces


def test_remote_run_reads_the_controlled_workspace_files(
    live_server: LiveServer, make_key: KeyMaker
) -> None:
    link_workspaces(live_server, make_key)
    reader = (
        "def handler(system, this, inputs):\n"
        "    return this.success('read', text=system.file('shared/info.txt').read_text())\n"
    )
    caller = (
        "def handler(system, this, inputs):\n"
        "    child = this.flow('reader', remote='to-b', use_remote_flow=True)\n"
        "    return this.success('done', text=child.get('output_value')['text'])\n"
    )
    client = live_server.client
    assert client.put("/api/v1/workspaces/sb/flows/reader", json={"script": reader}).is_success
    assert client.put("/api/v1/workspaces/sa/flows/caller", json={"script": caller}).is_success
    put = client.put("/api/v1/workspaces/sb/files/shared/info.txt", content=b"from B")
    assert put.status_code == 201
    # The controlling workspace has a file of that name too: the remote run must not see it.
    assert client.put("/api/v1/workspaces/sa/files/shared/info.txt", content=b"from A").is_success
    started = client.post("/api/v1/workspaces/sa/executions", json={"flow": "caller"}).json()
    ended = live_server.wait_for("sa", started["id"], timeout=60)
    assert ended["status"] == "success", ended
    assert ended["output_value"] == {"text": "from B"}
