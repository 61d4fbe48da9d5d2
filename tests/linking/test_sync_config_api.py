"""Sync configs through a real server: every field, write-only keys, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from flowlink.linking import keys
from flowlink.store.models import SyncConfig
from tests.conftest import LiveServer
from tests.linking.conftest import KeyMaker, public_pem_of

BASE = "/api/v1/workspaces/ops/sync_config"
REMOTE = "https://edge.example.com/api/v1/workspaces/intranet/sync_config/cloud/sync"


@pytest.fixture
def ws(live_server: LiveServer) -> LiveServer:
    response = live_server.client.post("/api/v1/workspaces", json={"slug": "ops"})
    assert response.status_code == 201, response.text
    return live_server


@pytest.fixture(scope="module")
def refusing_ws(module_live_server: LiveServer) -> LiveServer:
    """``ws`` once per module and backend, for the cases whose requests are all refused."""
    response = module_live_server.client.post("/api/v1/workspaces", json={"slug": "ops"})
    assert response.status_code == 201, response.text
    return module_live_server


def body(make_key: KeyMaker, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "intranet",
        "remote_url": REMOTE,
        "own_private_key": make_key("openssl-genrsa").read_text(),
        "remote_public_key": public_pem_of(make_key("ssh-keygen-pem")),
        "sync_interval": None,
    }
    data.update(overrides)
    return data


def test_create_shows_fingerprints_never_keys(ws: LiveServer, make_key: KeyMaker) -> None:
    response = ws.client.post(BASE, json=body(make_key))
    assert response.status_code == 201, response.text
    view = response.json()
    own = keys.load_private_key(make_key("openssl-genrsa").read_text())
    assert view["own_public_key_fingerprint"] == keys.fingerprint(own)
    assert len(view["remote_public_key_fingerprints"]) == 1
    assert view["direction"] == "controlling" and view["connects"] is True
    assert view["sync_endpoint"] == "/api/v1/workspaces/ops/sync_config/intranet/sync"
    for text in (response.text, ws.client.get(BASE).text, ws.client.get(f"{BASE}/intranet").text):
        assert "PRIVATE KEY" not in text and "PUBLIC KEY" not in text
    with ws.store.read() as session:
        stored = session.scalars(select(SyncConfig)).one()
    assert "PRIVATE KEY" not in stored.own_private_key  # encrypted at rest


def test_answering_end_and_reverse_connect(ws: LiveServer, make_key: KeyMaker) -> None:
    answering = ws.client.post(BASE, json=body(make_key, name="a", remote_url=None)).json()
    assert answering["direction"] == "controlled" and answering["connects"] is False
    reverse = ws.client.post(BASE, json=body(make_key, name="b", direction="controlled")).json()
    assert reverse["direction"] == "controlled" and reverse["connects"] is True


def test_rotation_with_two_public_keys_and_patch(ws: LiveServer, make_key: KeyMaker) -> None:
    assert ws.client.post(BASE, json=body(make_key)).status_code == 201
    two = (
        public_pem_of(make_key("ssh-keygen-pem"))
        + Path(str(make_key("ssh-keygen-openssh")) + ".pub").read_text()
    )
    view = ws.client.patch(f"{BASE}/intranet", json={"remote_public_key": two}).json()
    assert len(view["remote_public_key_fingerprints"]) == 2
    view = ws.client.patch(
        f"{BASE}/intranet", json={"enabled": False, "sync_interval": 5, "verify_ssl": False}
    ).json()
    assert (view["enabled"], view["sync_interval"], view["verify_ssl"]) == (False, 5.0, False)
    assert any("verification is off" in w for w in view["warnings"])
    assert len(view["remote_public_key_fingerprints"]) == 2  # keys kept when not given


@pytest.mark.parametrize(
    ("overrides", "field", "needle"),
    [
        ({"own_private_key": "garbage"}, "own_private_key", "not a readable private key"),
        ({"own_private_key": "@ssh-keygen-ed25519"}, "own_private_key", "RSA key is required"),
        ({"own_private_key": "@openssl-1024"}, "own_private_key", "1024 bits"),
        ({"own_private_key": "@pub"}, "own_private_key", "this is a public key"),
        ({"remote_public_key": "@openssl-genrsa"}, "remote_public_key", "this is a private key"),
        ({"remote_url": "ftp://x/y"}, "remote_url", "http:// or https://"),
        ({"remote_url": "https://x.example.com/elsewhere"}, "remote_url", "sync endpoint"),
        ({"sync_interval": -1}, "sync_interval", "between 0"),
        ({"direction": "sideways"}, "direction", "controlling"),
        ({"ca_certificate": "not a cert"}, "ca_certificate", "PEM certificate"),
        ({"name": "bad name"}, "name", "invalid sync config name"),
        ({"surprise": 1}, "surprise", ""),
        ({"role": "superuser"}, "role", "not a role of workspace"),
    ],
)
def test_bad_fields_are_422_naming_the_field(
    refusing_ws: LiveServer,
    make_key: KeyMaker,
    overrides: dict[str, Any],
    field: str,
    needle: str,
) -> None:
    ws = refusing_ws
    for key, value in list(overrides.items()):
        if isinstance(value, str) and value.startswith("@"):
            recipe = value[1:]
            overrides[key] = (
                Path(str(make_key("ssh-keygen-openssh")) + ".pub").read_text()
                if recipe == "pub"
                else make_key(recipe).read_text()
            )
    response = ws.client.post(BASE, json=body(make_key, **overrides))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    fields = [error["details"].get("field")] + [
        e["field"] for e in error["details"].get("errors", [])
    ]
    assert field in fields, error
    assert needle in error["message"]
    assert "PRIVATE KEY" not in response.text
    assert ws.client.get(BASE).json()["items"] == []  # nothing stored


def test_duplicates_unknowns_and_delete(ws: LiveServer, make_key: KeyMaker) -> None:
    assert ws.client.post(BASE, json=body(make_key)).status_code == 201
    assert ws.client.post(BASE, json=body(make_key)).status_code == 409
    assert ws.client.get(f"{BASE}/nope").status_code == 404
    assert ws.client.patch(f"{BASE}/intranet", json={"name": "other"}).status_code == 422
    assert ws.client.get(f"{BASE}/intranet").json()["role"] == "editor"
    patched = ws.client.patch(f"{BASE}/intranet", json={"role": "viewer"})
    assert patched.status_code == 200 and patched.json()["role"] == "viewer"
    assert ws.client.delete(f"{BASE}/intranet").status_code == 204
    assert ws.client.get(f"{BASE}/intranet").status_code == 404
