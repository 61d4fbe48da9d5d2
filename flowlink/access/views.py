"""Response models of users, login sessions, workspace members and API tokens."""

from __future__ import annotations

from pydantic import Field

from flowlink.timestamps import Timestamp
from flowlink.views import View


class MembershipView(View):
    """A role in a workspace."""

    workspace: str
    role: str


class UserView(View):
    """A user (never the password hash); ``password`` only when one was generated."""

    id: str
    username: str
    is_admin: bool
    disabled: bool
    created_at: Timestamp
    memberships: list[MembershipView] | None = None
    password: str | None = Field(None, description="A generated password, shown once")


class UserList(View):
    """Every user of the organization."""

    items: list[UserView]


class LoginView(View):
    """A new login session: the user, the CSRF token and when the session expires."""

    user: UserView
    csrf_token: str
    expires_at: Timestamp


class TokenScope(View):
    """The API token a request came with."""

    id: str
    workspace: str | None
    role: str | None


class MeView(View):
    """Who the caller is."""

    user: str | None
    user_id: str | None
    is_admin: bool
    token: TokenScope | None
    memberships: list[MembershipView]


class PasswordChanged(View):
    """A changed password; ``password`` only when one was generated."""

    user: str
    changed: bool
    password: str | None = Field(None, description="A generated password, shown once")


class MemberView(View):
    """A user's role in a workspace."""

    user: str
    role: str
    user_id: str | None = None
    disabled: bool | None = None
    workspace: str | None = None


class MemberList(View):
    """The members of a workspace."""

    items: list[MemberView]


class TokenView(View):
    """An API token; its secret (``token``) only in the answer that created it."""

    id: str
    name: str
    user: str
    workspace: str | None
    role: str | None
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None
    state: str = Field(description="active, expired or revoked")
    token: str | None = Field(None, description="The secret, shown once")


class TokenList(View):
    """API tokens, never their secrets."""

    items: list[TokenView]
