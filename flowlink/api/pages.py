"""Routes that serve pages (HTML) and list them (JSON), and custom-domain routing.

Pages are served at ``/pages/{ws}/`` (the ``index`` page) and ``/pages/{ws}/{page}``; on a
custom domain of the workspace at ``/`` and ``/{page}``, where nothing else is served.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import re
import secrets
import time
from typing import Any, cast
from urllib.parse import parse_qsl, quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from flowlink.access import policy
from flowlink.access import service as access
from flowlink.access.service import Principal
from flowlink.api.access import set_login_cookies
from flowlink.api.deps import SESSION_COOKIE, Caller, Context, ServerContext
from flowlink.api.responses import ApiRoute
from flowlink.errors import FlowlinkError, NotFound, Unauthorized
from flowlink.execution_status import ExecutionStatus
from flowlink.pages import service as pages
from flowlink.pages.views import PageList
from flowlink.workspaces import page_store
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.domains import host_key
from flowlink.workspaces.page_templates import RenderError

router = APIRouter(tags=["pages"], route_class=ApiRoute)
PAGE_CSRF_COOKIE = "flowlink_page_csrf"
CSRF_FIELD = "csrf_token"
MAX_FORM_BYTES = 64 * 1024
CUSTOM_DOMAIN_KEY = "flowlink.custom_domain"
ORIGINAL_PATH_KEY = "flowlink.original_path"
_PAGE_PATH = re.compile(r"/(?:_login|[A-Za-z0-9][A-Za-z0-9_.-]{0,127})?")
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


@router.get("/api/v1/workspaces/{ws}/pages", response_model=PageList)
def list_pages(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The workspace's pages with their URL, title, access and data sources."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "read", "pages", workspace)
        return {
            "items": [
                page_store.page_view(page, workspace)
                for page in page_store.list_pages(session, workspace)
                if policy.allows(caller, "read", "pages", workspace, {"page": page.slug})
            ]
        }


# --- HTML -------------------------------------------------------------------------------------


def _base_url(request: Request, ws: str) -> str:
    return "/" if request.scope.get(CUSTOM_DOMAIN_KEY) else f"/pages/{ws}/"


def _message_page(status: int, title: str, message: str) -> HTMLResponse:
    body = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)


def _visitor(request: Request, context: ServerContext) -> tuple[Principal | None, str | None]:
    """The logged-in visitor (API token or session cookie) and the session cookie, if any."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    cookie = request.cookies.get(SESSION_COOKIE)
    try:
        with context.store.read() as session:
            if scheme.lower() == "bearer" and secret.strip():
                return access.authenticate_token(session, secret.strip()), None
            if cookie:
                return access.authenticate_session(session, cookie), cookie
    except Unauthorized:
        pass
    return None, None


def _csrf(request: Request, session_cookie: str | None) -> tuple[str, bool]:
    """The CSRF token for forms, and whether it is a new anonymous one (to set as a cookie)."""
    if session_cookie:
        return access.csrf_token_for(session_cookie), False
    existing = request.cookies.get(PAGE_CSRF_COOKIE)
    if existing and len(existing) >= 32:
        return existing, False
    return secrets.token_urlsafe(32), True


def _finish(response: Response, request: Request, token: str, new_token: bool) -> Response:
    if new_token:
        response.set_cookie(
            PAGE_CSRF_COOKIE,
            token,
            httponly=True,
            samesite="lax",
            secure=request.url.scheme == "https",
            path="/",
        )
    return response


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form of a POST (last value of a repeated field); None if too large."""
    raw = await request.body()
    if len(raw) > MAX_FORM_BYTES:
        return None
    return dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))


async def _serve(
    request: Request, ws: str, slug: str, form: dict[str, str] | None = None
) -> Response:
    context: ServerContext = request.app.state.context
    base = _base_url(request, ws)
    query = dict(request.query_params)

    def context_for(
        principal: Principal | None, token: str, events: Any, **extra: Any
    ) -> pages.PageContext:
        user = principal.username if principal else None
        return pages.PageContext(
            base_url=base, query=query, csrf_token=token, user=user, events=events, **extra
        )

    def prepare() -> tuple[Any, ...]:
        """Everything but the flows, in one thread hop; a page without flows is rendered too."""
        principal, cookie = _visitor(request, context)
        with context.store.read() as session:
            loaded = pages.load_page(session, ws, slug)
            decision = pages.decide(principal, loaded.workspace, loaded.spec)
            events = (
                pages.recent_events(
                    session, loaded.workspace, loaded.spec.event_types, loaded.spec.events_limit
                )
                if decision is pages.Decision.ALLOW
                else []
            )
        token, new_token = _csrf(request, cookie)
        body: str | RenderError | None = None
        if decision is pages.Decision.ALLOW and form is None and loaded.spec.flow is None:
            body = _render(loaded, context_for(principal, token, events))
        return principal, loaded, decision, events, token, new_token, body

    try:
        principal, loaded, decision, events, token, new_token, body = await asyncio.to_thread(
            prepare
        )
    except NotFound:
        return _message_page(404, "Page not found", "There is no such page.")
    if decision is pages.Decision.LOGIN:
        path = request.scope.get(ORIGINAL_PATH_KEY) or request.url.path
        target = f"{base}_login?next={quote(path)}"
        return RedirectResponse(target, status_code=303)
    if decision is pages.Decision.DENY:
        return _message_page(403, "Forbidden", "You may not see this page.")
    spec = loaded.spec
    status = 200
    if body is None:
        result: Any = None
        error: str | None = None
        if form is not None:
            if spec.form_flow is None:
                return _message_page(405, "Method not allowed", "This page has no form.")
            sent = form.pop(CSRF_FIELD, "")
            if new_token or not sent or not hmac.compare_digest(sent, token):
                return _message_page(
                    403, "Forbidden", "Missing or wrong CSRF token: reload the page."
                )
            outcome = await _run_flow(context, loaded, spec.form_flow, form, principal, "form")
            if outcome.ok:
                result = outcome.outputs
            else:
                error, status = outcome.message or outcome.status, 422
        data: Any = None
        if spec.flow is not None:
            outcome = await _run_flow(context, loaded, spec.flow, query, principal, "view")
            if not outcome.ok:
                return _message_page(
                    502, "Page unavailable", f"The page's flow failed: {outcome.message}"
                )
            data = outcome.outputs
        page_context = context_for(principal, token, events, data=data, result=result, error=error)
        body = await asyncio.to_thread(_render, loaded, page_context)
    if isinstance(body, RenderError):
        return _message_page(500, "Page error", f"The page template failed: {body}")
    headers = dict(_SECURITY_HEADERS)
    if not spec.public:
        headers["Cache-Control"] = "private, no-store"
    response = HTMLResponse(body, status_code=status, headers=headers)
    return _finish(response, request, token, new_token)


def _render(loaded: pages.LoadedPage, page_context: pages.PageContext) -> str | RenderError:
    """The page's HTML, or the template's error (rendered off the event loop)."""
    try:
        return pages.render_page(loaded, page_context)
    except RenderError as exc:
        return exc


async def _run_flow(
    context: ServerContext,
    loaded: pages.LoadedPage,
    flow: str,
    inputs: dict[str, str],
    principal: Principal | None,
    purpose: str,
) -> pages.FlowResult:
    def start() -> str:
        with context.store.write() as session:
            workspace = workspaces.get_workspace(session, loaded.workspace.slug)
            return pages.start_page_flow(
                session,
                workspace,
                loaded.spec,
                flow,
                inputs,
                principal,
                default_max_runtime=context.settings.default_max_runtime,
                purpose=purpose,
            )

    try:
        return await pages.run_flow(context.store, start, pages.PAGE_FLOW_TIMEOUT)
    except FlowlinkError as exc:
        return pages.FlowResult(ExecutionStatus.ERROR, None, exc.message)


_LOGIN_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>Log in</title></head>
<body><h1>Log in</h1>{error}
<form method="post">
<input type="hidden" name="csrf_token" value="{token}">
<input type="hidden" name="next" value="{next}">
<label>User <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Log in</button>
</form></body></html>"""


def _safe_next(value: str | None, base: str) -> str:
    if value and value.startswith(base) and "//" not in value and "\\" not in value:
        return value
    return base


def _login_page(request: Request, ws: str, error: str | None, status: int) -> Response:
    token, new_token = _csrf(request, None)
    base = _base_url(request, ws)
    body = _LOGIN_FORM.format(
        error=f"<p role='alert'>{html.escape(error)}</p>" if error else "",
        token=html.escape(token),
        next=html.escape(_safe_next(request.query_params.get("next"), base)),
    )
    response = HTMLResponse(body, status_code=status, headers=_SECURITY_HEADERS)
    return _finish(response, request, token, new_token)


@router.get("/pages/{ws}/_login", include_in_schema=False, response_class=HTMLResponse)
async def login_form(ws: str, request: Request) -> Response:
    """The login form for a workspace's restricted pages."""
    return _login_page(request, ws, None, 200)


@router.post("/pages/{ws}/_login", include_in_schema=False, response_class=HTMLResponse)
async def login_submit(ws: str, request: Request) -> Response:
    """Log in from the page login form: sets the session cookies and goes back to the page."""
    context: ServerContext = request.app.state.context
    form = await _form(request) or {}
    sent, expected = form.get(CSRF_FIELD, ""), request.cookies.get(PAGE_CSRF_COOKIE, "")
    if not sent or not expected or not hmac.compare_digest(sent, expected):
        return _login_page(request, ws, "The form expired: please try again.", 403)
    address = request.client.host if request.client else "unknown"

    def login() -> access.LoginResult:
        with context.store.write() as session:
            return access.login(
                session,
                context.login_throttle,
                form.get("username", ""),
                form.get("password", ""),
                address,
            )

    try:
        result = await asyncio.to_thread(login)
    except FlowlinkError as exc:
        return _login_page(request, ws, exc.message, exc.status)
    target = _safe_next(form.get("next"), _base_url(request, ws))
    response = RedirectResponse(target, status_code=303)
    set_login_cookies(response, request, result)
    return response


@router.get("/pages/{ws}", include_in_schema=False, response_class=HTMLResponse)
async def workspace_root(ws: str) -> Response:
    """``/pages/{ws}`` -> ``/pages/{ws}/``."""
    return RedirectResponse(f"/pages/{ws}/", status_code=308)


@router.get("/pages/{ws}/", include_in_schema=False, response_class=HTMLResponse)
async def index_page(ws: str, request: Request) -> Response:
    """The workspace's ``index`` page."""
    return await _serve(request, ws, page_store.INDEX)


@router.post("/pages/{ws}/", include_in_schema=False, response_class=HTMLResponse)
async def index_form(ws: str, request: Request) -> Response:
    """Submit the ``index`` page's form."""
    form = await _form(request)
    if form is None:
        return _message_page(413, "Form too large", f"At most {MAX_FORM_BYTES} bytes.")
    return await _serve(request, ws, page_store.INDEX, form)


@router.get("/pages/{ws}/{page}", include_in_schema=False, response_class=HTMLResponse)
async def show_page(ws: str, page: str, request: Request) -> Response:
    """A page of the workspace."""
    return await _serve(request, ws, page)


@router.post("/pages/{ws}/{page}", include_in_schema=False, response_class=HTMLResponse)
async def submit_form(ws: str, page: str, request: Request) -> Response:
    """Submit a page's form: runs its form flow (CSRF token required) and shows the result."""
    form = await _form(request)
    if form is None:
        return _message_page(413, "Form too large", f"At most {MAX_FORM_BYTES} bytes.")
    return await _serve(request, ws, page, form)


# --- custom domains ---------------------------------------------------------------------------


class CustomDomains:
    """Serve a workspace's pages, and nothing else, on the custom domains it claims.

    A request whose ``Host`` (port ignored, case-insensitive, IDNA) is a claimed domain is
    routed to ``/pages/{ws}/...``; any path that is not a page (the API, the console) is 404.
    Other hosts pass through untouched.
    """

    def __init__(self, app: ASGIApp, lookup: DomainLookup) -> None:
        self.app = app
        self.lookup = lookup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = None
        for name, value in scope.get("headers") or ():
            if name == b"host":
                host = value.decode("latin-1")
                break
        key = host_key(host)
        slug = None
        if key:
            # A host seen within the last second is answered on the event loop: the server's
            # own host name costs no thread hop per request, only one read a second.
            slug = self.lookup.cached(key)
            if slug is _UNKNOWN:
                slug = await asyncio.to_thread(self.lookup, key)
        if slug is None:
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "/")
        if scope["type"] != "http" or _PAGE_PATH.fullmatch(path) is None:
            response = _message_page(404, "Not found", "There is no such page.")
            await response(scope, receive, send)
            return
        new_path = f"/pages/{slug}/{path[1:]}"
        scope = dict(scope, path=new_path, raw_path=new_path.encode())
        scope[CUSTOM_DOMAIN_KEY] = key
        scope[ORIGINAL_PATH_KEY] = path
        await self.app(scope, receive, send)


DOMAIN_CACHE_SECONDS = 1.0
_DOMAIN_CACHE_SIZE = 4096


_UNKNOWN: Any = object()  # a domain not in the cache, or whose answer is too old


class DomainLookup:
    """The workspace slug serving a canonical domain, read from the store.

    Answers (found or not) are kept for a second, so requests for the server's own host
    name do not each cost a store read; a change of ``customDomains`` takes effect within
    that second in every server process. ``cached`` answers from the cache alone (on the
    event loop); calling the lookup reads the store (in a thread).
    """

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.cache: dict[str, tuple[float, str | None]] = {}

    def cached(self, domain: str) -> Any:
        """The slug (or ``None``) if known for less than a second, else ``_UNKNOWN``."""
        hit = self.cache.get(domain)
        if hit is not None and time.monotonic() - hit[0] < DOMAIN_CACHE_SECONDS:
            return hit[1]
        return _UNKNOWN

    def __call__(self, domain: str) -> str | None:
        slug = self.cached(domain)
        if slug is not _UNKNOWN:
            return cast("str | None", slug)
        now = time.monotonic()
        with self.context.store.read() as session:
            slug = page_store.workspace_for_domain(session, domain)
        if len(self.cache) >= _DOMAIN_CACHE_SIZE:
            self.cache.clear()
        self.cache[domain] = (now, slug)
        return cast("str | None", slug)


def domain_lookup(context: ServerContext) -> DomainLookup:
    """The store's custom domains, cached for a second (see ``DomainLookup``)."""
    return DomainLookup(context)
