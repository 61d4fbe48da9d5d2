"""Managing the organization's users on the store directly (``flowlink users``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from flowlink.access import policy
from flowlink.access import service as access
from flowlink.errors import Invalid
from flowlink.store.models import User
from flowlink.workspaces import service as workspaces


def _grant(session: Session, user: User, slug: str, role: str) -> None:
    workspace = workspaces.get_workspace(session, slug)
    if not policy.role_exists(workspace, role):
        raise Invalid(f"unknown role {role!r} in workspace {slug!r}", details={"field": "role"})
    access.set_membership(session, user, workspace, role)


def _view(session: Session, user: User) -> dict[str, Any]:
    return access.user_view(user, access.user_memberships(session, user.id))


def create_user(
    session: Session,
    username: str,
    password: str | None,
    *,
    is_admin: bool,
    roles: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Create a user with roles (``(workspace slug, role)``); a generated password is shown
    once, in the view's ``password``."""
    user = access.create_user(session, username, None, is_admin=is_admin)
    generated = access.set_password(session, user, password)
    for slug, role in roles:
        _grant(session, user, slug, role)
    view = _view(session, user)
    if password is None:
        view["password"] = generated
    return view


def list_users(session: Session) -> list[dict[str, Any]]:
    """Every user with their workspace roles."""
    return [_view(session, user) for user in access.list_users(session)]


def set_disabled(session: Session, username: str, disabled: bool) -> dict[str, Any]:
    """Disable (their sessions end, their tokens stop working) or enable a user."""
    return access.user_view(
        access.set_disabled(session, access.get_user(session, username), disabled)
    )


def reset_password(session: Session, username: str, password: str | None) -> dict[str, Any]:
    """Set a new password (their sessions end); a generated one is in the view's ``password``."""
    user = access.get_user(session, username)
    generated = access.set_password(session, user, password)
    view = access.user_view(user)
    if password is None:
        view["password"] = generated
    return view


def grant(session: Session, username: str, slug: str, role: str) -> dict[str, Any]:
    """Give a user a role in a workspace (replacing the one they had)."""
    user = access.get_user(session, username)
    _grant(session, user, slug, role)
    return _view(session, user)
