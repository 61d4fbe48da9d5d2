"""Every change records its event, through a real server: flows, users, memberships and
passwords, each in the same transaction as its change and never with a password or hash."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from flowlink.access import service as access
from flowlink.store.engine import Store
from flowlink.store.models import Event, User
from tests.conftest import LiveServer

WS = "changes"
WORKSPACE_YML = f"name: Changes\nslug: {WS}\n"
SCRIPT = "def handler(inputs, this):\n    return {'ok': True}\n"
PASSWORD = "a long enough password"


def _events(store: Store, after: int, prefixes: tuple[str, ...]) -> list[Event]:
    with store.read() as session:
        rows = session.scalars(select(Event).where(Event.seq > after).order_by(Event.seq)).all()
        return [e for e in rows if e.type.startswith(prefixes)]


def _last_seq(store: Store) -> int:
    with store.read() as session:
        return int(session.scalar(select(Event.seq).order_by(Event.seq.desc()).limit(1)) or 0)


def _shape(events: list[Event]) -> list[tuple[str, str | None, dict[str, Any]]]:
    slugs = [(e.source or {}).get("workspaceSlug") for e in events]
    return [(e.type, slug, dict(e.payload)) for e, slug in zip(events, slugs, strict=True)]


@pytest.fixture
def ws(live_server: LiveServer) -> LiveServer:
    response = live_server.client.post(
        f"/api/v1/workspaces/{WS}/apply", json={"files": {"workspace.yml": WORKSPACE_YML}}
    )
    assert response.status_code in (200, 201), response.text
    return live_server


def test_flow_changes_record_flows_updated_and_deleted(ws: LiveServer) -> None:
    start = _last_seq(ws.store)
    url = f"/api/v1/workspaces/{WS}/flows/hello"
    assert ws.client.put(url, json={"script": SCRIPT}).status_code == 201
    assert ws.client.put(url, json={"script": SCRIPT.replace("True", "False")}).status_code == 200
    # a refused change records nothing
    assert ws.client.put(url, json={"script": "def handler(:\n"}).status_code == 422
    assert ws.client.delete(url).status_code == 204
    assert ws.client.delete(url).status_code == 404
    assert _shape(_events(ws.store, start, ("flows.",))) == [
        ("flows.updated", WS, {"name": "hello", "created": True}),
        ("flows.updated", WS, {"name": "hello", "created": False}),
        ("flows.deleted", WS, {"name": "hello"}),
    ]


def test_user_membership_and_password_changes_record_their_events(ws: LiveServer) -> None:
    start = _last_seq(ws.store)
    client = ws.client
    created = client.post("/api/v1/users", json={"username": "ann", "password": PASSWORD})
    assert created.status_code == 201, created.text
    ann = created.json()["id"]
    member = f"/api/v1/workspaces/{WS}/members/ann"
    assert client.put(member, json={"role": "viewer"}).status_code == 200
    assert client.put(member, json={"role": "viewer"}).status_code == 200  # no change
    assert client.put(member, json={"role": "editor"}).status_code == 200
    assert client.delete(member).status_code == 204
    assert client.patch("/api/v1/users/ann", json={"disabled": True}).status_code == 200
    assert client.patch("/api/v1/users/ann", json={"disabled": True}).status_code == 200
    assert client.patch("/api/v1/users/ann", json={"disabled": False}).status_code == 200
    reset = client.post("/api/v1/users/ann/password", json={})
    assert reset.status_code == 200
    generated = reset.json()["password"]
    # refused: the last admin cannot be disabled, so nothing is recorded
    assert client.patch("/api/v1/users/admin", json={"disabled": True}).status_code == 409
    events = _events(ws.store, start, ("users.", "memberships."))
    assert _shape(events) == [
        ("users.created", None, {"id": ann, "user": "ann", "admin": False}),
        ("users.password_changed", None, {"id": ann, "user": "ann", "generated": False}),
        ("memberships.updated", WS, {"user": "ann", "role": "viewer", "previous": None}),
        ("memberships.updated", WS, {"user": "ann", "role": "editor", "previous": "viewer"}),
        ("memberships.deleted", WS, {"user": "ann", "role": "editor"}),
        ("users.disabled", None, {"id": ann, "user": "ann"}),
        ("users.enabled", None, {"id": ann, "user": "ann"}),
        ("users.password_changed", None, {"id": ann, "user": "ann", "generated": True}),
    ]
    with ws.store.read() as session:
        user = session.scalar(select(User).where(User.username == "ann"))
        assert user is not None and user.password_hash
        stored_hash = user.password_hash
        every = session.scalars(select(Event.payload)).all()
    text = repr(every)
    for secret in (PASSWORD, generated, stored_hash, "$argon2"):
        assert secret not in text


def test_a_rolled_back_change_leaves_no_event(ws: LiveServer) -> None:
    start = _last_seq(ws.store)
    with pytest.raises(RuntimeError), ws.store.write() as session:
        user = access.create_user(session, "bob", PASSWORD)
        access.set_password(session, user, PASSWORD + "!")
        raise RuntimeError("abort the transaction")
    assert _events(ws.store, start, ("users.",)) == []
    with ws.store.read() as session:
        assert session.scalar(select(User).where(User.username == "bob")) is None
