"""Routes for sync configs (one end of a workspace link). Keys are write-only."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from pydantic import Field
from starlette._utils import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from flowlink.access.policy import authorize
from flowlink.api.bodies import RequestBody
from flowlink.api.deps import Caller, Context, ServerContext
from flowlink.api.errors import ErrorBody, domain_error_response
from flowlink.api.responses import ApiRoute
from flowlink.errors import FlowlinkError
from flowlink.linking import exchange
from flowlink.linking import service as linking
from flowlink.linking.endpoint import answer_exchange
from flowlink.linking.views import SYNC_ENVELOPE_SCHEMA, SyncConfigList, SyncConfigView
from flowlink.settings import resolve_secret_key
from flowlink.workspaces import service as workspaces

router = APIRouter(
    prefix="/api/v1/workspaces/{ws}/sync_config", tags=["linking"], route_class=ApiRoute
)


class SyncConfigFields(RequestBody):
    """A sync config's fields (docs/linking.md); keys are accepted here and never returned."""

    enabled: bool | None = None
    remote_url: str | None = Field(
        None, description="The other side's sync endpoint; set on the end that connects"
    )
    ca_certificate: str | None = Field(None, description="PEM CA certificate to trust")
    verify_ssl: bool | None = None
    own_private_key: str | None = Field(
        None, description="PEM (PKCS#1, PKCS#8) or OpenSSH RSA private key, >= 2048 bits"
    )
    own_private_key_env: str | None = Field(
        None,
        description="Instead of own_private_key: the server's environment variable holding it"
        " (read by the server, never stored or returned)",
    )
    own_private_key_file: str | None = Field(
        None,
        description="Instead of own_private_key: an absolute path on the server to the key"
        " file (read by the server, never stored or returned)",
    )
    remote_public_key: str | None = Field(
        None, description="The other end's public key(s): one, or two while keys rotate"
    )
    send_all_executions: bool | None = None
    send_all_executions_meaning: str | None = Field(
        None,
        description="'mirror' (default, Workspace Linking v8): send_all_executions mirrors every"
        " execution to the controlled workspace; 'list' (older version): runs started through"
        " the link show in the controlling workspace's list only with send_all_executions",
    )
    sync_interval: float | None = Field(None, description="Seconds; null = immediate mode")
    direction: str | None = Field(None, description="controlling | controlled")
    role: str | None = Field(
        None, description="Role of executions started through this link (default editor)"
    )


class SyncConfigCreate(SyncConfigFields):
    name: str


def _fields(body: SyncConfigFields) -> dict[str, Any]:
    # Only what the caller sent: an omitted key keeps the stored one.
    data = body.model_dump(exclude_unset=True)
    for field in ("enabled", "verify_ssl", "send_all_executions"):
        if field in data and data[field] is None:
            del data[field]
    return data


@router.get("", response_model=SyncConfigList)
def list_sync_configs(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The workspace's sync configs, with key fingerprints."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "sync_configs", workspace)
        configs = linking.list_sync_configs(session, workspace)
        return {"items": linking.sync_config_views(session, configs, workspace.slug)}


@router.post("", status_code=201, response_model=SyncConfigView)
def create_sync_config(
    ws: str, body: SyncConfigCreate, context: Context, caller: Caller
) -> dict[str, Any]:
    """Create one end of a link (organization admins only)."""
    secret = resolve_secret_key(context.settings)
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "manage", "sync_configs", workspace)
        config = linking.create_sync_config(session, workspace, _fields(body), secret)
        return linking.sync_config_view(session, config, workspace.slug)


@router.post(
    "/{name}/sync",
    response_class=Response,
    responses={
        200: {
            "description": "The signed answer envelope of the link protocol (docs/linking.md)",
            "content": {"application/json": {"schema": SYNC_ENVELOPE_SCHEMA}},
        },
        401: {
            "model": ErrorBody,
            "description": "Rejected: unsigned, bad signature, replay, disabled...",
        },
    },
)
async def sync(ws: str, name: str, request: Request) -> Response:
    """The sync endpoint of a link: a signed exchange of messages (no login; the signature is
    the authentication). See docs/linking.md for the protocol.

    Served by ``SyncEndpoint`` in front of the router; the route documents the operation."""
    return await answer_sync(ws, name, request)


async def answer_sync(ws: str, name: str, request: Request) -> Response:
    """Answer one exchange of a link (domain errors are raised, for the caller to map)."""
    context: ServerContext = request.app.state.context
    body = await request.body()
    answer = await answer_exchange(
        context.store,
        context.settings,
        ws,
        name,
        method=request.method,
        url=str(request.url),
        # The raw header pairs as the server read them: no decoding and encoding again.
        headers=httpx.Headers(request.scope["headers"]),
        body=body,
        client=request.client.host if request.client else None,
        stopping=context.stopping,
    )
    response = Response(content=answer.content)  # its raw headers: the length alone
    response.raw_headers.extend(answer.headers.raw)
    return response


class SyncEndpoint:
    """``POST .../sync_config/{name}/sync`` answered in front of the router.

    A thousand sites renew their long polls here: routing through every route, solving
    dependencies and the exception middleware would cost more than the exchange's own Python
    work. Installed inside ``CatchAll`` (unexpected errors answer the JSON 500), it sits behind
    the forwarded headers, the metrics (``scope["route"]`` is the route's, so it is counted
    under its template), tracing and the body guard, as every route does; a domain error gets
    the answer the exception handlers give (``domain_error_response``). Any other request, a
    GET on the same path too, goes on to the router.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = sync_route()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = self.route.path_regex.match(get_route_path(scope))
            if match is not None:
                scope["route"] = self.route
                scope["path_params"] = params = match.groupdict()
                request = Request(scope, receive)
                response: Response
                try:
                    response = await answer_sync(params["ws"], params["name"], request)
                except FlowlinkError as exc:
                    response = await domain_error_response(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def sync_route() -> APIRoute:
    """The route of the sync endpoint (its path template and documentation)."""
    for route in router.routes:
        if isinstance(route, APIRoute) and route.endpoint is sync:
            return route
    raise LookupError("the sync route is not on the router")


@router.get("/{name}", response_model=SyncConfigView)
def get_sync_config(ws: str, name: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One sync config, with key fingerprints."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "sync_configs", workspace)
        config = linking.get_sync_config(session, workspace, name)
        return linking.sync_config_view(session, config, workspace.slug)


@router.patch("/{name}", response_model=SyncConfigView)
def update_sync_config(
    ws: str, name: str, body: SyncConfigFields, context: Context, caller: Caller
) -> dict[str, Any]:
    """Change fields of a sync config (enable, rotate keys, ...); organization admins only."""
    secret = resolve_secret_key(context.settings)
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "manage", "sync_configs", workspace)
        config = linking.update_sync_config(session, workspace, name, _fields(body), secret)
        return linking.sync_config_view(session, config, workspace.slug)


@router.delete("/{name}", status_code=204, response_class=Response)
def delete_sync_config(ws: str, name: str, context: Context, caller: Caller) -> Response:
    """Delete one end of a link (organization admins only)."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "manage", "sync_configs", workspace)
        exchange.delete_link(session, workspace, name)
    return Response(status_code=204)
