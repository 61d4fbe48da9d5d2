"""Routes for login sessions, users, workspace members and API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import AwareDatetime, Field

from flowlink.access import policy
from flowlink.access import service as access
from flowlink.access.views import (
    LoginView,
    MemberList,
    MemberView,
    MeView,
    PasswordChanged,
    TokenList,
    TokenView,
    UserList,
    UserView,
)
from flowlink.api.bodies import RequestBody
from flowlink.api.deps import CSRF_COOKIE, SESSION_COOKIE, Caller, Context
from flowlink.api.responses import ApiRoute
from flowlink.errors import Invalid, NotFound
from flowlink.timestamps import format_timestamp
from flowlink.workspaces import service as workspaces

router = APIRouter(prefix="/api/v1", tags=["access"], route_class=ApiRoute)


class LoginBody(RequestBody):
    username: str = Field(max_length=128)
    password: str = Field(max_length=1024)


class UserCreate(RequestBody):
    username: str
    password: str | None = Field(None, description="Omit to generate one (returned once)")
    is_admin: bool = False


class UserPatch(RequestBody):
    disabled: bool | None = None


class PasswordBody(RequestBody):
    password: str | None = Field(None, description="Omit (as an admin) to generate one")
    current_password: str | None = Field(None, description="Required to change your own")


class MemberBody(RequestBody):
    role: str = Field(description="owner, editor, operator, viewer or a custom role")


class TokenCreate(RequestBody):
    name: str = Field(min_length=1, max_length=128)
    workspace: str | None = Field(None, description="Workspace slug; omit for an admin token")
    role: str | None = Field(None, description="Role in the workspace (at most your own)")
    expires_at: AwareDatetime | None = Field(
        None, description="Optional expiry (ISO 8601 with a time zone, e.g. ...Z)"
    )


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def set_login_cookies(response: Response, request: Request, result: access.LoginResult) -> None:
    """Set the HTTP-only session cookie and the readable CSRF cookie (Secure under TLS)."""
    secure = request.url.scheme == "https"
    max_age = access.SESSION_HOURS * 3600
    response.set_cookie(
        SESSION_COOKIE,
        result.secret,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=secure,
        path="/",
    )
    response.set_cookie(
        CSRF_COOKIE,
        result.csrf_token,
        max_age=max_age,
        httponly=False,
        samesite="lax",
        secure=secure,
        path="/",
    )


# --- login sessions ---------------------------------------------------------------------------


@router.post("/auth/login", response_model=LoginView)
def login(
    body: LoginBody, request: Request, response: Response, context: Context
) -> dict[str, Any]:
    """Log in with a password: sets an HTTP-only session cookie and a CSRF cookie."""
    with context.store.write() as session:
        result = access.login(
            session, context.login_throttle, body.username, body.password, _client_ip(request)
        )
        user = access.user_view(result.user)
    set_login_cookies(response, request, result)
    return {
        "user": user,
        "csrf_token": result.csrf_token,
        "expires_at": format_timestamp(result.expires_at),
    }


@router.post("/auth/logout", status_code=204, response_class=Response)
def logout(request: Request, context: Context, caller: Caller) -> Response:
    """End the current login session and clear its cookies."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie and caller.session_id:
        with context.store.write() as session:
            access.logout(session, cookie)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/auth/me", response_model=MeView)
def me(context: Context, caller: Caller) -> dict[str, Any]:
    """Who the caller is: user, admin flag, token scope and workspace roles."""
    with context.store.read() as session:
        memberships = access.user_memberships(session, caller.user_id) if caller.user_id else []
        scope = None
        if caller.workspace_id:
            workspace = workspaces.workspace_by_id(session, caller.workspace_id)
            scope = workspace.slug if workspace else None
    return {
        "user": caller.username,
        "user_id": caller.user_id,
        "is_admin": caller.is_admin,
        "token": {"id": caller.token_id, "workspace": scope, "role": caller.role}
        if caller.token_id
        else None,
        "memberships": [{"workspace": slug, "role": role} for slug, role in memberships],
    }


# --- users ------------------------------------------------------------------------------------


@router.get("/users", response_model=UserList)
def list_users(context: Context, caller: Caller) -> dict[str, Any]:
    """All users of the organization (organization admin only)."""
    policy.authorize_admin(caller, "list users")
    with context.store.read() as session:
        return {"items": [access.user_view(u) for u in access.list_users(session)]}


@router.post("/users", status_code=201, response_model=UserView)
def create_user(body: UserCreate, context: Context, caller: Caller) -> dict[str, Any]:
    """Create a user; a generated password is returned once."""
    policy.authorize_admin(caller, "create users")
    with context.store.write() as session:
        user = access.create_user(session, body.username, None, is_admin=body.is_admin)
        password = access.set_password(session, user, body.password)
        view = access.user_view(user, [])
    if body.password is None:
        view["password"] = password
    return view


def _self_or_admin(caller: Caller, username: str, what: str) -> None:
    if caller.username != username or caller.kind != "user" or caller.user_id is None:
        policy.authorize_admin(caller, what)


@router.get("/users/{username}", response_model=UserView)
def get_user(username: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One user with their workspace roles (admins, or the user themself)."""
    _self_or_admin(caller, username, "read other users")
    with context.store.read() as session:
        user = access.get_user(session, username)
        return access.user_view(user, access.user_memberships(session, user.id))


@router.patch("/users/{username}", response_model=UserView)
def patch_user(username: str, body: UserPatch, context: Context, caller: Caller) -> dict[str, Any]:
    """Disable or enable a user (organization admin only)."""
    policy.authorize_admin(caller, "change users")
    with context.store.write() as session:
        user = access.get_user(session, username)
        if body.disabled is not None:
            access.set_disabled(session, user, body.disabled)
        return access.user_view(user, access.user_memberships(session, user.id))


@router.post("/users/{username}/password", response_model=PasswordChanged)
def reset_password(
    username: str, body: PasswordBody, context: Context, caller: Caller
) -> dict[str, Any]:
    """Reset a password (admins) or change your own (with ``current_password``)."""
    is_self = caller.username == username and caller.user_id is not None
    if not (is_self and not policy.is_org_admin(caller)):
        policy.authorize_admin(caller, "reset other users' passwords")
    with context.store.write() as session:
        user = access.get_user(session, username)
        if not policy.is_org_admin(caller):
            if body.password is None:
                raise Invalid("password is required", details={"field": "password"})
            if not access.verify_password(user, body.current_password or ""):
                raise Invalid("current_password is wrong", details={"field": "current_password"})
        password = access.set_password(session, user, body.password)
    view: dict[str, Any] = {"user": username, "changed": True}
    if body.password is None:
        view["password"] = password
    return view


# --- workspace members ------------------------------------------------------------------------


@router.get("/workspaces/{ws}/members", response_model=MemberList)
def list_members(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The users with a role in the workspace."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "read", "workspace", workspace)
        return {"items": access.list_members(session, workspace)}


@router.put("/workspaces/{ws}/members/{username}", response_model=MemberView)
def put_member(
    ws: str, username: str, body: MemberBody, context: Context, caller: Caller
) -> dict[str, Any]:
    """Give a user a role in the workspace (never a role above your own)."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "manage", "workspace", workspace)
        if not policy.role_exists(workspace, body.role):
            raise Invalid(
                f"unknown role {body.role!r} in workspace {ws!r}", details={"field": "role"}
            )
        if not policy.can_grant(caller, workspace, body.role):
            raise policy.deny(
                caller, "manage", "workspace", workspace, f"role {body.role!r} exceeds your own"
            )
        user = access.get_user(session, username)
        access.set_membership(session, user, workspace, body.role)
        return {"user": username, "workspace": ws, "role": body.role}


@router.delete("/workspaces/{ws}/members/{username}", status_code=204, response_class=Response)
def delete_member(ws: str, username: str, context: Context, caller: Caller) -> Response:
    """Remove a user's role in the workspace."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "manage", "workspace", workspace)
        access.remove_membership(session, access.get_user(session, username), workspace)
    return Response(status_code=204)


# --- API tokens -------------------------------------------------------------------------------


@router.post("/tokens", status_code=201, response_model=TokenView)
def create_token(body: TokenCreate, context: Context, caller: Caller) -> dict[str, Any]:
    """Create an API token for yourself, scoped to a workspace and a role; shown once."""
    with context.store.write() as session:
        workspace = None
        if body.workspace is None:
            policy.authorize_admin(caller, "create tokens for the whole organization")
            if body.role is not None:
                raise Invalid("a role needs a workspace", details={"field": "workspace"})
        else:
            workspace = workspaces.get_workspace(session, body.workspace)
            policy.authorize(caller, "create", "tokens", workspace, {"role": body.role})
            if body.role is None and not policy.is_org_admin(caller):
                raise Invalid("role is required", details={"field": "role"})
            if body.role is not None:
                if not policy.role_exists(workspace, body.role):
                    raise Invalid(
                        f"unknown role {body.role!r} in workspace {body.workspace!r}",
                        details={"field": "role"},
                    )
                if not policy.can_grant(caller, workspace, body.role):
                    raise policy.deny(
                        caller,
                        "create",
                        "tokens",
                        workspace,
                        f"a token with role {body.role!r} would exceed your own rights in"
                        f" {body.workspace!r}",
                    )
        secret, token = access.issue_token(
            session, caller, body.name, workspace, body.role, body.expires_at
        )
        view = access.token_view(token, body.workspace, caller.username)
    return {**view, "token": secret}


@router.get("/tokens", response_model=TokenList)
def list_tokens(context: Context, caller: Caller, all: bool = False) -> dict[str, Any]:
    """Your API tokens (``all=true``: everyone's, organization admin only); never the secret."""
    if all:
        policy.authorize_admin(caller, "list every user's tokens")
    with context.store.read() as session:
        rows = access.list_tokens(session, None if all else caller.user_id or "")
        return {"items": [access.token_view(t, slug, owner) for t, slug, owner in rows]}


@router.delete("/tokens/{token_id}", status_code=204, response_class=Response)
def revoke_token(token_id: str, context: Context, caller: Caller) -> Response:
    """Revoke a token: your own, any of a workspace you manage, or any (organization admin)."""
    with context.store.write() as session:
        token = access.get_token(session, token_id)
        if token.user_id != caller.user_id and not policy.is_org_admin(caller):
            workspace = workspaces.workspace_by_id(session, token.workspace_id)
            if workspace is None or not policy.allows(caller, "manage", "tokens", workspace):
                raise NotFound(f"API token {token_id!r} not found", details={"token": token_id})
        access.revoke_token(session, token, caller)
    return Response(status_code=204)
