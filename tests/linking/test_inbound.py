"""The sync endpoint's gate on the real store (both backends): signatures, replays, disabled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select, update

from flowlink.linking import inbound, keys, service, signing
from flowlink.store.engine import Store
from flowlink.store.models import Event, LinkNonce, Workspace
from flowlink.workspaces import service as workspaces
from tests.linking.conftest import KeyMaker, public_pem_of

SECRET = "server-secret"
URL = "http://b.example.com/api/v1/workspaces/edge/sync_config/cloud/sync"
BODY = b'{"messages":[]}'


@pytest.fixture
def workspace(store: Store, make_key: KeyMaker) -> Workspace:
    with store.write() as session:
        ws = workspaces.create_workspace(session, "edge")
        service.create_sync_config(
            session,
            ws,
            {
                "name": "cloud",
                "own_private_key": make_key("openssl-genpkey").read_text(),
                "remote_public_key": public_pem_of(make_key("openssl-genrsa")),
            },
            SECRET,
        )
        return ws


def signed(make_key: KeyMaker, recipe: str = "openssl-genrsa", **kwargs: object) -> httpx.Headers:
    key = keys.load_private_key(make_key(recipe).read_text())
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(key, "POST", URL, headers, BODY, **kwargs)  # type: ignore[arg-type]
    return headers


def gate(store: Store, workspace: Workspace, headers: httpx.Headers) -> str:
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        config = inbound.authenticate_exchange(
            session,
            ws,
            "cloud",
            method="POST",
            url=URL,
            headers=headers,
            body=BODY,
        )
        return config.name


def test_valid_once_then_replayed(store: Store, workspace: Workspace, make_key: KeyMaker) -> None:
    headers = signed(make_key)
    assert gate(store, workspace, headers) == "cloud"
    with pytest.raises(inbound.SyncRejected) as info:
        gate(store, workspace, headers)
    assert info.value.reason == "replayed"
    assert info.value.status == 401
    assert gate(store, workspace, signed(make_key)) == "cloud"  # a fresh nonce passes


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "unsigned"),
        ("stranger", "unknown_key"),
        ("stale", "stale"),
        ("future", "future"),
        ("tampered", "digest_mismatch"),
        ("disabled", "disabled"),
    ],
)
def test_rejections_name_their_reason_and_leave_no_nonce(
    store: Store, workspace: Workspace, make_key: KeyMaker, case: str, reason: str
) -> None:
    now = datetime.now(UTC)
    headers = signed(make_key, "ssh-keygen-pem" if case == "stranger" else "openssl-genrsa")
    if case == "unsigned":
        del headers["signature"]
    elif case == "stale":
        headers = signed(make_key, created=now - timedelta(minutes=6))
    elif case == "future":
        headers = signed(make_key, created=now + timedelta(minutes=6))
    elif case == "tampered":
        headers["content-digest"] = "sha-512=:AAAA:"
    elif case == "disabled":
        with store.write() as session:
            ws = session.get(Workspace, workspace.id)
            assert ws is not None
            service.update_sync_config(session, ws, "cloud", {"enabled": False}, SECRET)
    with pytest.raises(inbound.SyncRejected) as info:
        gate(store, workspace, headers)
    assert info.value.reason == reason
    with store.read() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        assert inbound.seen_nonces(session, service.get_sync_config(session, ws, "cloud")) == []


def test_old_nonces_are_forgotten(
    store: Store, workspace: Workspace, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbound, "FORGET_EVERY", 0.0)  # clean up on every request
    gate(store, workspace, signed(make_key))
    with store.write() as session:  # age the first nonce past the memory window
        session.execute(
            update(LinkNonce).values(
                seen_at=datetime.now(UTC) - inbound.NONCE_MEMORY - timedelta(seconds=1)
            )
        )
    gate(store, workspace, signed(make_key))
    with store.read() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        remembered = inbound.seen_nonces(session, service.get_sync_config(session, ws, "cloud"))
    assert len(remembered) == 1


def test_rejection_event(store: Store, workspace: Workspace) -> None:
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        inbound.record_rejection(
            session,
            ws,
            "cloud",
            inbound.SyncRejected("replayed", "seen before"),
            {"method": "POST", "path": "/x", "ip": "127.0.0.1"},
        )
    with store.read() as session:
        event = session.scalars(select(Event).where(Event.type == "sync.rejected")).one()
    assert event.payload["reason"] == "replayed"
    assert event.source["http"]["ip"] == "127.0.0.1"
