"""Helpers for access tests: users with roles and their tokens, made in the real store."""

from __future__ import annotations

from datetime import datetime

from flowlink.access import service as access
from flowlink.store.engine import Store
from flowlink.workspaces import service as workspaces

PASSWORD = "correct horse battery"


def make_user(
    store: Store,
    username: str,
    roles: dict[str, str] | None = None,
    *,
    is_admin: bool = False,
    password: str = PASSWORD,
) -> str:
    """Create a user with memberships (slug -> role); returns the user id."""
    with store.write() as session:
        user = access.create_user(session, username, password, is_admin=is_admin)
        for slug, role in (roles or {}).items():
            access.set_membership(session, user, workspaces.get_workspace(session, slug), role)
        return user.id


def make_token(
    store: Store,
    username: str,
    workspace: str | None,
    role: str | None,
    *,
    expires_at: datetime | None = None,
) -> str:
    """An API token of an existing user for a workspace and role; returns the secret."""
    with store.write() as session:
        user = access.get_user(session, username)
        ws_id = workspaces.get_workspace(session, workspace).id if workspace else None
        secret, _ = access.create_token(
            session, user, f"{username}-token", workspace_id=ws_id, role=role, expires_at=expires_at
        )
        return secret


def user_with_token(store: Store, username: str, workspace: str, role: str) -> str:
    """A user who is ``role`` in ``workspace`` and a token of theirs with that role."""
    make_user(store, username, {workspace: role})
    return make_token(store, username, workspace, role)
