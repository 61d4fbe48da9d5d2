"""Routes for executions: start, list, show, logs, cancel."""

from __future__ import annotations

from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from pydantic import Field

from flowlink.access.policy import allows, authorize
from flowlink.access.service import Principal
from flowlink.api.bodies import MAX_ID, RequestBody
from flowlink.api.deps import Caller, Context, ServerContext, request_http
from flowlink.api.responses import ApiRoute
from flowlink.errors import FlowlinkError, Invalid
from flowlink.executions import service as executions
from flowlink.executions import starts
from flowlink.executions.views import ExecutionBatchView, ExecutionList, ExecutionView, LogPage
from flowlink.linking import exchange
from flowlink.linking import starts as linking_starts
from flowlink.store import notify
from flowlink.store.engine import Session, Store
from flowlink.store.models import Execution, Workspace
from flowlink.workspaces import service as workspaces

router = APIRouter(
    prefix="/api/v1/workspaces/{ws}/executions", tags=["executions"], route_class=ApiRoute
)
MAX_WAIT_SECONDS = 300.0
MAX_BATCH = 1000


class ExecutionCreate(RequestBody):
    flow: str | None = Field(None, max_length=128, description="Name of the flow to run")
    inputs: dict[str, Any] | None = Field(None, description="Inputs (a JSON object)")
    script: str | None = Field(
        None, description="Run this script instead of a stored flow (ad-hoc run)"
    )
    name: str | None = Field(
        None, max_length=128, description="Name shown for an ad-hoc script run"
    )
    max_runtime: float | None = Field(
        None, gt=0, le=604800, description="Seconds before the execution is killed"
    )
    wait: float | None = Field(
        None, ge=0, le=MAX_WAIT_SECONDS, description="Block up to this many seconds for the end"
    )
    remote: str | None = Field(
        None, description="Run it in the linked workspace of this sync config (see linking)"
    )
    use_remote_flow: bool = Field(
        False, description="With remote: run the linked workspace's own flow of that name"
    )


class ExecutionBatch(RequestBody):
    executions: list[ExecutionCreate] = Field(
        min_length=1, max_length=MAX_BATCH, description="Executions to start, all or none"
    )


def _detail(
    store: Store, workspace_slug: str, execution_id: str, caller: Principal | None = None
) -> dict[str, Any]:
    with store.read() as session:
        workspace = workspaces.get_workspace(session, workspace_slug)
        if caller is not None:
            authorize(caller, "read", "executions", workspace)
        execution = executions.get_execution(session, workspace, execution_id)
        if caller is not None:
            authorize(caller, "read", "executions", workspace, {"flow": execution.flow_name})
        view = executions.execution_view(
            execution,
            workspace.slug,
            children=executions.child_ids(session, execution.id),
            with_script=True,
        )
        view["link"] = exchange.role_of_link(session, execution)
        return view


def _start(
    session: Session,
    workspace: Workspace,
    body: ExecutionCreate,
    context: ServerContext,
    caller: Principal,
    http: dict[str, Any],
) -> Execution:
    """Check the caller may run this and start it (an ad-hoc script also needs flow rights)."""
    request = starts.StartRequest(
        flow=body.flow,
        inputs=body.inputs,
        script=body.script,
        name=body.name,
        max_runtime=body.max_runtime,
        remote=body.remote,
        use_remote_flow=body.use_remote_flow,
    )
    attributes = {"flow": request.flow_name or "script"}
    authorize(caller, "execute", "executions", workspace, attributes)
    if body.script is not None:
        authorize(caller, "create", "flows", workspace, attributes)
    return linking_starts.start_execution(
        session,
        workspace,
        request,
        default_max_runtime=context.settings.default_max_runtime,
        user_id=caller.user_id,
        trigger=_api_trigger(caller),
        principal=caller.describe(),
        http=http,
    )


def _api_trigger(caller: Principal) -> dict[str, Any]:
    """The trigger of an API start: the token, or the login session it came from."""
    trigger: dict[str, Any] = {"type": "api", "token": caller.token_id}
    if caller.session_id:
        trigger["sessionId"] = caller.session_id
    return trigger


@router.post("", status_code=201, response_model=ExecutionView)
async def start_execution(
    ws: str, body: ExecutionCreate, request: Request, context: Context, caller: Caller
) -> dict[str, Any]:
    """Start an execution of a flow (or of an ad-hoc script) and return it.

    With ``wait`` the answer waits for the end without holding a thread: the store work
    runs in short thread hops and the wait is on the event loop.
    """
    http = request_http(request)

    def create(with_view: bool) -> tuple[str, dict[str, Any]]:
        with context.store.write() as session:
            workspace = workspaces.get_workspace(session, ws)
            execution = _start(session, workspace, body, context, caller, http)
            view: dict[str, Any] = {}
            if with_view:
                view = executions.execution_view(execution, workspace.slug, children=[])
                view["script"] = execution.script
            return execution.id, view

    if not body.wait:
        return (await to_thread.run_sync(create, True))[1]
    # Listening for ends from before the execution exists: its end cannot be missed, so
    # the wait reads the store only once woken.
    with starts.watching_ends(context.store) as watching:
        execution_id, _ = await to_thread.run_sync(create, False)
        return await starts.wait_and_read(
            context.store,
            execution_id,
            body.wait,
            lambda: _detail(context.store, ws, execution_id),
            watching=watching,
        )


@router.post("/batch", status_code=201, response_model=ExecutionBatchView)
def start_executions(
    ws: str, body: ExecutionBatch, request: Request, context: Context, caller: Caller
) -> dict[str, Any]:
    """Start many executions in one transaction: all of them or, on any error, none."""
    if any(item.wait for item in body.executions):
        raise Invalid("wait is not supported in a batch", details={"field": "executions.wait"})
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "execute", "executions", workspace)
        remotes = [item.remote for item in body.executions if item.remote is not None]
        exchange.prepare_remote_starts(session, workspace, remotes)
        flows = [item.flow for item in body.executions if item.flow and item.script is None]
        items = []
        with workspaces.flows_read_once(session, workspace, flows):
            for index, item in enumerate(body.executions):
                try:
                    execution = _start(
                        session, workspace, item, context, caller, request_http(request)
                    )
                except FlowlinkError as error:
                    error.message = f"executions[{index}]: {error.message}"
                    error.details = {**error.details, "index": index}
                    raise
                items.append(executions.execution_view(execution, workspace.slug, children=[]))
        return {"items": items}


@router.get("", response_model=ExecutionList)
def list_executions(
    ws: str,
    context: Context,
    caller: Caller,
    status: str | None = None,
    flow: str | None = None,
    parent: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    before: Annotated[str | None, Query(description="Cursor: next_cursor of the last page")] = None,
) -> dict[str, Any]:
    """Executions of the workspace, newest first, with cursor paging."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "executions", workspace)
        items = executions.list_executions(
            session,
            workspace,
            status=status,
            flow=flow,
            parent_id=parent,
            limit=limit,
            before=before,
        )
        return {
            "items": [
                executions.execution_view(e, workspace.slug)
                for e in items
                if allows(caller, "read", "executions", workspace, {"flow": e.flow_name})
            ],
            "next_cursor": items[-1].id if len(items) == limit else None,
        }


@router.get("/{execution_id}", response_model=ExecutionView)
def get_execution(ws: str, execution_id: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One execution with its script snapshot and children."""
    return _detail(context.store, ws, execution_id, caller)


@router.get("/{execution_id}/logs", response_model=LogPage)
async def get_logs(
    ws: str,
    execution_id: str,
    context: Context,
    caller: Caller,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="Only lines after this log id")] = 0,
    limit: Annotated[int, Query(ge=1, le=10000)] = 1000,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="Follow: when there is no line after `after` and the execution has"
            " not ended, wait up to this many seconds for one (or for the end)",
        ),
    ] = 0.0,
) -> dict[str, Any]:
    """Log lines of an execution, oldest first; follow with ``after`` (and ``wait``)."""
    page: dict[str, Any] = {}

    def read() -> bool:
        with context.store.read() as session:
            workspace = workspaces.get_workspace(session, ws)
            authorize(caller, "read", "executions", workspace)
            execution = executions.get_execution(session, workspace, execution_id)
            authorize(caller, "read", "executions", workspace, {"flow": execution.flow_name})
            lines = executions.get_logs(session, execution.id, after=after, limit=limit)
            page.update(
                items=[executions.log_view(line) for line in lines],
                status=execution.status,
                workspace_id=workspace.id,
            )
            return bool(lines) or executions.is_ended(execution.status)

    if not await to_thread.run_sync(read) and wait > 0:
        interests = {notify.LOGS: {page["workspace_id"]}, notify.ENDED: None}
        await notify.wait_until(context.store.notifier, interests, read, wait)
    return {"items": page["items"], "status": page["status"]}


@router.post("/{execution_id}/cancel", response_model=ExecutionView)
def cancel_execution(
    ws: str, execution_id: str, context: Context, caller: Caller
) -> dict[str, Any]:
    """Cancel an execution and its unfinished children."""
    with context.store.write() as session:
        workspace: Workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "execute", "executions", workspace)
        execution = executions.get_execution(session, workspace, execution_id)
        authorize(caller, "execute", "executions", workspace, {"flow": execution.flow_name})
        executions.request_cancel(session, execution, cancel_remote=exchange.cancel_mirrored)
    return _detail(context.store, ws, execution_id)
