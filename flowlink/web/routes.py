"""Console pages: login, home, flows with their Run form, executions and their live logs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData

from flowlink.access import service as access
from flowlink.access.policy import allows, authorize, visible
from flowlink.access.service import Principal
from flowlink.api.access import set_login_cookies
from flowlink.api.deps import CSRF_COOKIE, SESSION_COOKIE
from flowlink.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from flowlink.events import service as events
from flowlink.executions import service as executions
from flowlink.linking import exchange
from flowlink.linking import service as linking
from flowlink.store.models import Workspace, utcnow
from flowlink.web import live
from flowlink.web.render import render
from flowlink.web.session import (
    LOGIN_CSRF_COOKIE,
    WebRoute,
    check_csrf,
    check_login_csrf,
    context_of,
    csrf_of,
    current_user,
    new_login_csrf,
)
from flowlink.workspaces import service as workspaces

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)
PAGE_SIZE = 50


def viewer(request: Request) -> Principal:
    """The logged-in user of a page (LoginRequired otherwise); also set for the templates."""
    user = current_user(request)
    request.state.user = user
    request.state.csrf = csrf_of(request)
    return user


Viewer = Annotated[Principal, Depends(viewer)]


@dataclass
class Posted:
    """A submitted console form: who sent it and what it carried (CSRF already checked)."""

    user: Principal
    form: FormData

    def text(self, name: str) -> str:
        """A text field ('' when absent)."""
        value = self.form.get(name)
        return value if isinstance(value, str) else ""


async def posted(request: Request) -> Posted:
    """Authenticate a form POST and check its CSRF token (403 without a valid one)."""
    user = await run_in_threadpool(viewer, request)
    form = await request.form()
    check_csrf(request, form)
    return Posted(user, form)


Post = Annotated[Posted, Depends(posted)]


def _safe_next(target: str | None) -> str:
    """Only a local path may follow the login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def see_other(url: str) -> RedirectResponse:
    """A 303 redirect (after a form POST)."""
    return RedirectResponse(url, status_code=303)


def workspace_for(
    session: Any, user: Principal, slug: str, subject: str = "workspace"
) -> Workspace:
    """A workspace the user may read ``subject`` of (404 when hidden, 403 when not allowed)."""
    workspace = workspaces.get_workspace(session, slug)
    authorize(user, "read", subject, workspace)
    return workspace


# --- login ------------------------------------------------------------------------------------


def _login_page(
    request: Request, target: str, username: str = "", error: str = "", status: int = 200
) -> Response:
    token = new_login_csrf()
    response = render(
        request,
        "login.html",
        {"next": target, "username": username, "error": error, "login_csrf": token},
        status=status,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    """The login form (or straight on when the session is still valid)."""
    target = _safe_next(next)
    try:
        current_user(request)
    except Exception:
        return _login_page(request, target)
    return see_other(target)


@router.post("/login")
async def login_submit(request: Request) -> Response:
    """Check the password, open a session (cookies as the API's login), go to ``next``."""
    form = await request.form()
    check_login_csrf(request, form)
    username = str(form.get("username") or "")
    password = str(form.get("password") or "")
    target = _safe_next(str(form.get("next") or "/"))
    context = context_of(request)
    address = request.client.host if request.client else "unknown"

    def attempt() -> access.LoginResult:
        with context.store.write() as session:
            return access.login(session, context.login_throttle, username, password, address)

    try:
        if len(username) > 128 or len(password) > 1024:
            raise Unauthorized(access.LOGIN_FAILED)
        result = await run_in_threadpool(attempt)
    except (Unauthorized, TooManyRequests) as error:
        return _login_page(request, target, username, error.message, status=error.status)
    response = see_other(target)
    set_login_cookies(response, request, result)
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request, sent: Post) -> Response:
    """End the session server-side and clear its cookies."""
    cookie = request.cookies.get(SESSION_COOKIE, "")

    def end() -> None:
        with context_of(request).store.write() as session:
            access.logout(session, cookie)

    await run_in_threadpool(end)
    response = see_other("/login")
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


# --- home -------------------------------------------------------------------------------------


@router.get("/")
def home(request: Request, user: Viewer) -> Response:
    """The workspaces the user may see, each with its executions by status over 24 hours."""
    with context_of(request).store.read() as session:
        shown = [w for w in workspaces.list_workspaces(session) if visible(user, w)]
        counts = executions.status_counts(
            session, [w.id for w in shown], utcnow() - timedelta(hours=24)
        )
        items = [
            {"slug": w.slug, "name": w.name, "description": w.description, "counts": counts[w.id]}
            for w in shown
        ]
    return render(request, "home.html", {"items": items})


# --- flows ------------------------------------------------------------------------------------


@router.get("/w/{ws}/flows")
def flows_page(request: Request, ws: str, user: Viewer) -> Response:
    """The flows of a workspace."""
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "flows")
        items = [
            {"name": f.name, "description": f.description, "updated_at": f.updated_at}
            for f in workspaces.list_flows(session, workspace)
            if allows(user, "read", "flows", workspace, {"flow": f.name})
        ]
    return render(request, "flows.html", {"ws": ws, "nav": "flows", "items": items})


def _flow_page(
    request: Request,
    user: Principal,
    ws: str,
    name: str,
    *,
    inputs: str = "{}",
    remote: str = "",
    error: str = "",
    status: int = 200,
) -> Response:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "flows")
        flow = workspaces.get_flow(session, workspace, name)
        authorize(user, "read", "flows", workspace, {"flow": name})
        can_run = allows(user, "execute", "executions", workspace, {"flow": name})
        remotes = [
            c.name
            for c in linking.list_sync_configs(session, workspace)
            if c.enabled and linking.direction_of(c) == linking.CONTROLLING
        ]
        recent = executions.list_executions(session, workspace, flow=name, limit=10)
        recent_views = [executions.execution_view(e, ws) for e in recent]
    return render(
        request,
        "flow.html",
        {
            "ws": ws,
            "nav": "flows",
            "flow": {"name": flow.name, "description": flow.description, "script": flow.script},
            "can_run": can_run,
            "inputs": inputs,
            "error": error,
            "recent": recent_views,
            "remotes": remotes,
            "remote": remote,
        },
        status=status,
    )


@router.get("/w/{ws}/flows/{name}")
def flow_page(request: Request, ws: str, name: str, user: Viewer, inputs: str = "{}") -> Response:
    """A flow: its script highlighted, a Run form (for those who may run it), recent runs."""
    return _flow_page(request, user, ws, name, inputs=inputs)


def parse_inputs(raw: str) -> dict[str, Any] | None:
    """The Run form's inputs: a JSON object (or empty); Invalid names the problem."""
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except ValueError as error:
        raise Invalid(f"inputs: not valid JSON ({error})", details={"field": "inputs"}) from None
    if not isinstance(value, dict):
        raise Invalid("inputs: must be a JSON object", details={"field": "inputs"})
    return value


@router.post("/w/{ws}/flows/{name}/run")
async def run_flow(request: Request, ws: str, name: str, sent: Post) -> Response:
    """Start the flow with the form's inputs and open the new execution's page."""
    raw = sent.text("inputs")
    remote = sent.text("remote")
    context = context_of(request)

    def start() -> str:
        with context.store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "executions")
            authorize(sent.user, "execute", "executions", workspace, {"flow": name})
            workspaces.get_flow(session, workspace, name)
            if remote:
                return exchange.start_remote_execution(
                    session,
                    workspace,
                    remote,
                    exchange.RemoteStart(
                        flow=name,
                        inputs=parse_inputs(raw),
                        use_remote_flow=sent.text("use_remote_flow") == "on",
                    ),
                    user_id=sent.user.user_id,
                    trigger={"type": "console"},
                    principal=sent.user.describe(),
                    default_max_runtime=context.settings.default_max_runtime,
                ).id
            execution = executions.create_execution(
                session,
                workspace,
                flow_name=name,
                inputs=parse_inputs(raw),
                user_id=sent.user.user_id,
                trigger={"type": "console"},
                principal=sent.user.describe(),
                default_max_runtime=context.settings.default_max_runtime,
            )
            return execution.id

    try:
        execution_id = await run_in_threadpool(start)
    except (Invalid, Conflict) as error:
        message, status = error.message, error.status
        return await run_in_threadpool(
            lambda: _flow_page(
                request,
                sent.user,
                ws,
                name,
                inputs=raw,
                remote=remote,
                error=message,
                status=status,
            )
        )
    return see_other(f"/w/{ws}/executions/{execution_id}")


# --- executions -------------------------------------------------------------------------------


@router.get("/w/{ws}/executions")
def executions_page(
    request: Request,
    ws: str,
    user: Viewer,
    status: str = "",
    flow: str = "",
    trigger: str = "",
    by: str = "",
    after_date: Annotated[str, Query(alias="afterDate")] = "",
    before_date: Annotated[str, Query(alias="beforeDate")] = "",
    before: str = "",
) -> Response:
    """Executions, newest first, filtered, paged by cursor; rows follow status changes live."""
    error = ""
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "executions")
        try:
            window = events.parse_filter(after_date=after_date, before_date=before_date)
            started_by = None
            if by:
                try:
                    started_by = access.get_user(session, by).id
                except NotFound:
                    raise Invalid(f"started by: no user {by!r}", details={"field": "by"}) from None
            found = executions.list_executions(
                session,
                workspace,
                status=status or None,
                flow=flow or None,
                limit=PAGE_SIZE,
                before=before or None,
                trigger=trigger or None,
                user_id=started_by,
                since=window.after,
                until=window.before,
            )
        except Invalid as failure:
            error, found = failure.message, []
        items = [
            executions.execution_view(e, ws)
            for e in found
            if allows(user, "read", "executions", workspace, {"flow": e.flow_name})
        ]
        flow_names = [f.name for f in workspaces.list_flows(session, workspace)]
    filters = {
        "status": status,
        "flow": flow,
        "trigger": trigger,
        "by": by,
        "afterDate": after_date,
        "beforeDate": before_date,
    }
    next_url = None
    if len(found) == PAGE_SIZE:
        next_url = f"?{urlencode({**filters, 'before': found[-1].id})}"
    return render(
        request,
        "executions.html",
        {
            "ws": ws,
            "nav": "executions",
            "items": items,
            "filters": filters,
            "flow_names": flow_names,
            "error": error,
            "next_url": next_url,
            "first_page": not before,
        },
        status=422 if error else 200,
    )


def _execution(request: Request, user: Principal, ws: str, execution_id: str) -> dict[str, Any]:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "executions")
        execution = executions.get_execution(session, workspace, execution_id)
        authorize(user, "read", "executions", workspace, {"flow": execution.flow_name})
        view = executions.execution_view(execution, ws, with_script=True)
        view["children"] = _tree(user, workspace, executions.descendants(session, execution.id))
        view["link"] = _link_of(session, workspace, execution)
        view["can_run"] = allows(
            user, "execute", "executions", workspace, {"flow": execution.flow_name}
        )
        lines = executions.log_lines(session, execution.id, limit=live.FIRST_LINES)
        view["logs"] = lines
        view["logs_truncated"] = len(lines) == live.FIRST_LINES
        view["flow_exists"] = (
            workspaces.find_flow(session, workspace, execution.flow_name) is not None
        )
        return view


def _tree(user: Principal, workspace: Workspace, rows: list[Any]) -> list[dict[str, Any]]:
    """Descendants the user may read, as nested ``children`` lists (rows are by level)."""
    nodes: dict[str, dict[str, Any]] = {}
    top: list[dict[str, Any]] = []
    for row in rows:
        if not allows(user, "read", "executions", workspace, {"flow": row.flow_name}):
            continue
        node = {**executions.execution_view(row, workspace.slug), "children": []}
        nodes[row.id] = node
        parent = nodes.get(row.parent_id or "")
        (parent["children"] if parent else top).append(node)
    return top


def _link_of(session: Any, workspace: Workspace, execution: Any) -> dict[str, Any] | None:
    """The link an execution went over: sync config, role, other workspace and execution."""
    link = exchange.role_of_link(session, execution)
    if link is None:
        return None
    config = linking.find_sync_config(session, workspace, link["sync_config"])
    remote_url = config.remote_url if config else None
    found = linking.SYNC_PATH_RE.search(urlsplit(remote_url).path) if remote_url else None
    return {
        **link,
        "remote_url": remote_url,
        "remote_workspace": found.group("ws") if found else None,
    }


@router.get("/w/{ws}/executions/{execution_id}")
def execution_page(request: Request, ws: str, execution_id: str, user: Viewer) -> Response:
    """One execution: status, timeline, inputs, outputs, script, children, live log tail."""
    view = _execution(request, user, ws, execution_id)
    return render(
        request,
        "execution.html",
        {"ws": ws, "nav": "executions", "e": view, "ended": executions.is_ended(view["status"])},
    )


@router.post("/w/{ws}/executions/{execution_id}/cancel")
async def cancel_execution(request: Request, ws: str, execution_id: str, sent: Post) -> Response:
    """Cancel the execution and its unfinished children."""

    def cancel() -> None:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "executions")
            authorize(sent.user, "execute", "executions", workspace)
            execution = executions.get_execution(session, workspace, execution_id)
            authorize(sent.user, "execute", "executions", workspace, {"flow": execution.flow_name})
            executions.request_cancel(session, execution, cancel_remote=exchange.cancel_mirrored)

    await run_in_threadpool(cancel)
    return see_other(f"/w/{ws}/executions/{execution_id}")


@router.get("/w/{ws}/executions/{execution_id}/live")
async def execution_live(request: Request, ws: str, execution_id: str, after: int = 0) -> Response:
    """Server-Sent Events: the execution's new log lines and status changes until it ends."""
    user = await run_in_threadpool(viewer, request)
    await run_in_threadpool(_execution_check, request, user, ws, execution_id)
    return live.execution_stream(request, context_of(request).store, execution_id, after)


def _execution_check(request: Request, user: Principal, ws: str, execution_id: str) -> None:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "executions")
        execution = executions.get_execution(session, workspace, execution_id)
        authorize(user, "read", "executions", workspace, {"flow": execution.flow_name})
