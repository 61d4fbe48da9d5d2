"""A sync config's own private key from an environment variable or a file on the server."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select

from flowlink.linking import keys
from flowlink.store.models import SyncConfig
from tests.conftest import LiveServer
from tests.linking.conftest import KeyMaker, public_pem_of

ECHO = "def handler(system, this, inputs):\n    return this.success('echo', got=inputs['x'])\n"
CALL = (
    "def handler(system, this, inputs):\n"
    "    child = this.flow('echo', {'x': 41}, remote='to-b')\n"
    "    return this.success('done', got=child.get('output_value')['got'])\n"
)


@pytest.fixture
def two(live_server: LiveServer) -> LiveServer:
    for slug in ("ka", "kb"):
        assert live_server.client.post("/api/v1/workspaces", json={"slug": slug}).status_code == 201
    for name, script in (("echo", ECHO), ("call", CALL)):
        response = live_server.client.put(
            f"/api/v1/workspaces/ka/flows/{name}", json={"script": script}
        )
        assert response.status_code == 201, response.text
    return live_server


def test_keys_by_reference_link_works_and_are_never_stored_or_returned(
    two: LiveServer, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_a, key_b = make_key("openssl-genpkey"), make_key("ssh-keygen-pem")
    monkeypatch.setenv("FLOWLINK_TEST_LINK_KEY_A", key_a.read_text())
    b_url = f"{two.url}/api/v1/workspaces/kb/sync_config/from-a/sync"
    a = two.client.post(
        "/api/v1/workspaces/ka/sync_config",
        json={
            "name": "to-b",
            "remote_url": b_url,
            "own_private_key_env": "FLOWLINK_TEST_LINK_KEY_A",
            "remote_public_key": public_pem_of(key_b),
            "sync_interval": None,
        },
    )
    assert a.status_code == 201, a.text
    b = two.client.post(
        "/api/v1/workspaces/kb/sync_config",
        json={
            "name": "from-a",
            "own_private_key_file": str(key_b),
            "remote_public_key": public_pem_of(key_a),
        },
    )
    assert b.status_code == 201, b.text
    assert a.json()["own_private_key_source"] == "env:FLOWLINK_TEST_LINK_KEY_A"
    assert b.json()["own_private_key_source"] == f"file:{key_b}"
    assert a.json()["own_public_key_fingerprint"] == keys.fingerprint(
        keys.load_private_key(key_a.read_text())
    )
    with two.store.read() as session:
        stored = {c.name: c.own_private_key for c in session.scalars(select(SyncConfig))}
    assert stored == {"to-b": "ref:env:FLOWLINK_TEST_LINK_KEY_A", "from-a": f"ref:file:{key_b}"}
    for text in (a.text, b.text, two.client.get("/api/v1/workspaces/ka/sync_config").text):
        assert "PRIVATE KEY" not in text

    # The link signs with the referenced keys: a remote run goes there and back.
    time.sleep(2.5)  # the link engine picks up new configs within FLOWLINK_LINK_REFRESH
    started = two.client.post("/api/v1/workspaces/ka/executions", json={"flow": "call"}).json()
    done = two.wait_for("ka", started["id"], timeout=60)
    assert done["status"] == "success", done
    assert done["output_value"] == {"got": 41}


def test_bad_key_references_are_422_naming_the_field(
    two: LiveServer, make_key: KeyMaker, tmp_path: Path
) -> None:
    remote = public_pem_of(make_key("ssh-keygen-pem"))
    url = "/api/v1/workspaces/ka/sync_config"
    cases = [
        ({"own_private_key_env": "FLOWLINK_TEST_NOT_SET"}, "own_private_key_env", "is not set"),
        ({"own_private_key_env": "bad name"}, "own_private_key_env", "variable name"),
        ({"own_private_key_file": "relative.pem"}, "own_private_key_file", "absolute path"),
        ({"own_private_key_file": str(tmp_path / "nope")}, "own_private_key_file", "cannot read"),
        (
            {"own_private_key_file": str(make_key("ssh-keygen-ed25519"))},
            "own_private_key_file",
            "RSA",
        ),
        (
            {
                "own_private_key": make_key("openssl-genrsa").read_text(),
                "own_private_key_file": str(make_key("openssl-genpkey")),
            },
            "own_private_key_file",
            "one way",
        ),
    ]
    for fields, field, words in cases:
        response = two.client.post(
            url, json={"name": "x", "remote_public_key": remote, "sync_interval": None, **fields}
        )
        assert response.status_code == 422, (fields, response.text)
        error = response.json()["error"]
        assert error["details"]["field"] == field and words in error["message"], error
        assert "PRIVATE" not in response.text
    assert two.client.get(url).json()["items"] == []
