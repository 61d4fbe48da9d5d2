"""The access page of a workspace: members, roles with their rules, your API tokens, users
(organization admins) and the recent access denials."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flowlink.access import policy
from flowlink.access import service as access
from flowlink.access.service import Principal
from flowlink.errors import FlowlinkError, Invalid, NotFound
from flowlink.events import service as events
from flowlink.store.models import Workspace
from flowlink.web.render import render
from flowlink.web.routes import Post, Viewer, see_other, workspace_for
from flowlink.web.session import WebRoute, context_of

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)


def _rules(rules: tuple[policy.Rule, ...]) -> list[str]:
    return [
        f"{r.action} {r.subject}" + "".join(f" {k}={v}" for k, v in r.conditions) for r in rules
    ]


def _page(
    request: Request,
    user: Principal,
    ws: str,
    *,
    new_token: dict[str, Any] | None = None,
    new_user: dict[str, Any] | None = None,
    form: dict[str, str] | None = None,
    error: str = "",
    status: int = 200,
) -> Response:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws)
        roles = [
            {"name": name, "rules": _rules(policy.role_rules(workspace, name)), "custom": False}
            for name in policy.BUILTIN_ROLES
        ] + [
            {"name": name, "rules": _rules(policy.role_rules(workspace, name)), "custom": True}
            for name in sorted((workspace.spec or {}).get("roles", {}))
        ]
        tokens = [
            access.token_view(t, slug, owner)
            for t, slug, owner in access.list_tokens(session, user.user_id or "")
        ]
        denials = []
        if policy.allows(user, "read", "events", workspace, {"type": "access.denied"}):
            criteria = events.EventFilter(types=("access.denied",))
            denials = [
                events.event_view(e) for e in events.search(session, workspace, criteria, limit=20)
            ]
        users = (
            [access.user_view(u) for u in access.list_users(session)]
            if policy.is_org_admin(user)
            else None
        )
        data = {
            "members": access.list_members(session, workspace),
            "roles": roles,
            "tokens": tokens,
            "denials": denials,
            "users": users,
            "can_manage": policy.allows(user, "manage", "workspace", workspace),
            "can_token": policy.allows(user, "create", "tokens", workspace),
        }
    return render(
        request,
        "access.html",
        {
            "ws": ws,
            "nav": "access",
            "new_token": new_token,
            "new_user": new_user,
            "form": form or {"name": "", "role": "viewer", "expires_at": "", "username": ""},
            "error": error,
            **data,
        },
        status=status,
    )


@router.get("/w/{ws}/access")
def access_page(request: Request, ws: str, user: Viewer) -> Response:
    """Members, roles, your tokens, users and recent denials."""
    return _page(request, user, ws)


def _grantable(user: Principal, workspace: Workspace, role: str, action: str, subject: str) -> None:
    """The API's checks before giving a role: it exists and does not exceed the user's own."""
    if not policy.role_exists(workspace, role):
        raise Invalid(f"unknown role {role!r} in workspace {workspace.slug!r}", details={})
    if not policy.can_grant(user, workspace, role):
        raise policy.deny(user, action, subject, workspace, f"role {role!r} exceeds your own")


async def _handle(request: Request, ws: str, sent: Any, work: Any) -> Response:
    try:
        result = await run_in_threadpool(work)
    except FlowlinkError as error:
        if error.status not in (404, 409, 422):
            raise
        message, status = error.message, error.status
        fields = ("name", "role", "expires_at", "username", "new_username")
        form = {k: sent.text(k) for k in fields}
        return await run_in_threadpool(
            lambda: _page(request, sent.user, ws, form=form, error=message, status=status)
        )
    if isinstance(result, dict) and "new_user" in result:
        return await run_in_threadpool(lambda: _page(request, sent.user, ws, new_user=result))
    if isinstance(result, dict):
        return await run_in_threadpool(lambda: _page(request, sent.user, ws, new_token=result))
    return see_other(f"/w/{ws}/access")


@router.post("/w/{ws}/access/tokens")
async def create_token(request: Request, ws: str, sent: Post) -> Response:
    """Create an API token for yourself in this workspace; its secret is shown once."""
    name, role, expires = sent.text("name").strip(), sent.text("role"), sent.text("expires_at")

    def create() -> dict[str, Any]:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws)
            policy.authorize(sent.user, "create", "tokens", workspace, {"role": role})
            _grantable(sent.user, workspace, role, "create", "tokens")
            if not name or len(name) > 128:
                raise Invalid("name: 1-128 characters", details={"field": "name"})
            try:
                expires_at = (
                    datetime.fromisoformat(expires.replace("Z", "+00:00")) if expires else None
                )
            except ValueError:
                raise Invalid(
                    "expires_at: an ISO 8601 date, e.g. 2027-01-31", details={"field": "expires_at"}
                ) from None
            secret, token = access.issue_token(
                session, sent.user, name, workspace, role, expires_at
            )
            return {**access.token_view(token, ws, sent.user.username), "token": secret}

    return await _handle(request, ws, sent, create)


@router.post("/w/{ws}/access/tokens/{token_id}/revoke")
async def revoke_token(request: Request, ws: str, token_id: str, sent: Post) -> Response:
    """Revoke one of your tokens (or any of this workspace's, if you manage its tokens)."""

    def revoke() -> None:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws)
            token = access.get_token(session, token_id)
            own = token.user_id == sent.user.user_id
            mine_to_manage = token.workspace_id == workspace.id and policy.allows(
                sent.user, "manage", "tokens", workspace
            )
            if not (own or mine_to_manage or policy.is_org_admin(sent.user)):
                raise NotFound(f"API token {token_id!r} not found", details={"token": token_id})
            access.revoke_token(session, token, sent.user)

    return await _handle(request, ws, sent, revoke)


@router.post("/w/{ws}/access/members")
async def set_member(request: Request, ws: str, sent: Post) -> Response:
    """Give a user a role here (or, with an empty role, take it away)."""
    username, role = sent.text("username").strip(), sent.text("role")

    def change() -> None:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws)
            policy.authorize(sent.user, "manage", "workspace", workspace)
            member = access.get_user(session, username)
            if not role:
                access.remove_membership(session, member, workspace)
                return
            _grantable(sent.user, workspace, role, "manage", "workspace")
            access.set_membership(session, member, workspace, role)

    return await _handle(request, ws, sent, change)


@router.post("/w/{ws}/access/users")
async def create_user(request: Request, ws: str, sent: Post) -> Response:
    """Create a user (organization admins); the generated password is shown once."""
    username = sent.text("new_username").strip()

    def create() -> dict[str, Any]:
        policy.authorize_admin(sent.user, "create users")
        with context_of(request).store.write() as session:
            user = access.create_user(
                session, username, None, is_admin=sent.text("is_admin") == "on"
            )
            password = access.set_password(session, user, None)
        return {"new_user": username, "password": password}

    return await _handle(request, ws, sent, create)


@router.post("/w/{ws}/access/users/{username}/disabled")
async def set_disabled(request: Request, ws: str, username: str, sent: Post) -> Response:
    """Disable a user (ending their sessions) or enable them again (organization admins)."""

    def change() -> None:
        policy.authorize_admin(sent.user, "change users")
        with context_of(request).store.write() as session:
            access.set_disabled(
                session, access.get_user(session, username), sent.text("disabled") == "on"
            )

    return await _handle(request, ws, sent, change)
