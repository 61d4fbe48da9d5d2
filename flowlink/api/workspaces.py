"""Routes for workspaces, applying/exporting them, flows and settings."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Response
from pydantic import Field

from flowlink import assembly
from flowlink.access.policy import allows, authorize, authorize_admin, visible
from flowlink.access.service import Principal
from flowlink.api.bodies import RequestBody
from flowlink.api.deps import Caller, Context
from flowlink.api.responses import ApiRoute
from flowlink.automations.webhooks import ensure_webhook_keys
from flowlink.settings import resolve_secret_key
from flowlink.store.models import Workspace
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.views import (
    ApplyResultView,
    ExportView,
    FlowList,
    FlowView,
    SettingList,
    SettingView,
    WorkspaceList,
    WorkspaceView,
)

router = APIRouter(prefix="/api/v1/workspaces", tags=["workspaces"], route_class=ApiRoute)


class WorkspaceCreate(RequestBody):
    slug: str = Field(description="2-63 of a-z 0-9 -")
    name: str | None = Field(None, max_length=200)
    description: str | None = None


class ApplyBody(RequestBody):
    files: dict[str, str] = Field(
        description="The workspace folder: 'workspace.yml', 'flows/<name>.py', 'settings.yml'"
    )


class FlowBody(RequestBody):
    script: str
    description: str | None = None


class SettingBody(RequestBody):
    value: Any = Field(description="Any JSON value")
    secret: bool | None = Field(
        default=None,
        description="true: a secret setting (encrypted at rest, never returned; needs 'manage"
        " settings'); omitted: keep the setting's kind (new settings are plain)",
    )


@router.get("", response_model=WorkspaceList)
def list_workspaces(context: Context, caller: Caller) -> dict[str, Any]:
    """List the workspaces the caller can see (slug and name only without ``read workspace``,
    e.g. for a ``visitor``, who may see pages and nothing else)."""
    with context.store.read() as session:
        items = [
            workspaces.workspace_view(w)
            if allows(caller, "read", "workspace", w)
            else {"id": w.id, "slug": w.slug, "name": w.name}
            for w in workspaces.list_workspaces(session)
            if visible(caller, w)
        ]
    return {"items": items}


@router.post("", status_code=201, response_model=WorkspaceView)
def create_workspace(body: WorkspaceCreate, context: Context, caller: Caller) -> dict[str, Any]:
    """Create an empty workspace."""
    authorize_admin(caller, "create workspaces")
    with context.store.write() as session:
        workspace = workspaces.create_workspace(session, body.slug, body.name, body.description)
        return workspaces.workspace_view(workspace)


@router.get("/{ws}", response_model=WorkspaceView)
def get_workspace(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One workspace with its rendered config."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "workspace", workspace)
        return workspaces.workspace_view(workspace)


@router.delete("/{ws}", status_code=204, response_class=Response)
def delete_workspace(ws: str, context: Context, caller: Caller) -> Response:
    """Delete a workspace with its flows, settings and executions."""
    with context.store.write() as session:
        authorize(caller, "delete", "workspace", workspaces.get_workspace(session, ws))
        workspaces.delete_workspace(session, ws)
    return Response(status_code=204)


def _authorize_apply(caller: Principal, existing: Workspace | None) -> None:
    if existing is None:
        authorize_admin(caller, "create workspaces")
    else:
        authorize(caller, "update", "workspace", existing)


@router.post("/{ws}/apply", response_model=ApplyResultView)
def apply_workspace(ws: str, body: ApplyBody, context: Context, caller: Caller) -> dict[str, Any]:
    """Create or update the workspace from its folder's files, all or nothing."""
    with context.store.read() as session:
        existing = workspaces.find_workspace(session, ws)
        _authorize_apply(caller, existing)
        workspaces.precheck_new_settings(
            session, existing, body.files, context.settings.apply_max_settings
        )
    bundle = workspaces.parse_files(body.files)
    with context.store.write() as session:
        existing = workspaces.find_workspace(session, ws)
        _authorize_apply(caller, existing)
        if existing is not None:
            for name in bundle.secrets:
                authorize(caller, "manage", "settings", existing, {"setting": name})
        result = assembly.apply_bundle(
            session,
            bundle,
            os.environ,
            expected_slug=ws,
            max_new_settings=context.settings.apply_max_settings,
            secret_key=resolve_secret_key(context.settings) if bundle.secrets else None,
        )
        view = result.view()
        # New webhook keys are shown once, here (rotate: POST .../automations/{a}/webhook_key).
        view["webhook_keys"] = ensure_webhook_keys(session, result.workspace)
        return view


@router.get("/{ws}/export", response_model=ExportView)
def export_workspace(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The workspace as folder files."""
    with context.store.read() as session:
        authorize(caller, "read", "workspace", workspaces.get_workspace(session, ws))
        return {"files": workspaces.export_files(session, ws)}


@router.get("/{ws}/flows", response_model=FlowList)
def list_flows(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """All flows of the workspace."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "flows", workspace)
        return {
            "items": [
                workspaces.flow_view(f)
                for f in workspaces.list_flows(session, workspace)
                if allows(caller, "read", "flows", workspace, {"flow": f.name})
            ]
        }


@router.get("/{ws}/flows/{name}", response_model=FlowView)
def get_flow(ws: str, name: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One flow with its script."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "flows", workspace, {"flow": name})
        return workspaces.flow_view(workspaces.get_flow(session, workspace, name))


@router.put(
    "/{ws}/flows/{name}",
    response_model=FlowView,
    responses={201: {"model": FlowView, "description": "Created"}},
)
def put_flow(
    ws: str, name: str, body: FlowBody, response: Response, context: Context, caller: Caller
) -> dict[str, Any]:
    """Create or replace a flow (its script must compile)."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        exists = workspaces.find_flow(session, workspace, name) is not None
        authorize(caller, "update" if exists else "create", "flows", workspace, {"flow": name})
        flow, created = workspaces.put_flow(session, workspace, name, body.script, body.description)
        response.status_code = 201 if created else 200
        return workspaces.flow_view(flow)


@router.delete("/{ws}/flows/{name}", status_code=204, response_class=Response)
def delete_flow(ws: str, name: str, context: Context, caller: Caller) -> Response:
    """Delete a flow."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "delete", "flows", workspace, {"flow": name})
        workspaces.delete_flow(session, workspace, name)
    return Response(status_code=204)


@router.get("/{ws}/settings", response_model=SettingList)
def list_settings(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """All settings of the workspace."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "settings", workspace)
        return {
            "items": [
                workspaces.setting_view(s)
                for s in workspaces.list_settings(session, workspace)
                if allows(caller, "read", "settings", workspace, {"setting": s.name})
            ]
        }


@router.get("/{ws}/settings/{name}", response_model=SettingView)
def get_setting(ws: str, name: str, context: Context, caller: Caller) -> dict[str, Any]:
    """One setting with its value."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "settings", workspace, {"setting": name})
        return workspaces.setting_view(workspaces.get_setting(session, workspace, name))


@router.put("/{ws}/settings/{name}", response_model=SettingView)
def put_setting(
    ws: str, name: str, body: SettingBody, context: Context, caller: Caller
) -> dict[str, Any]:
    """Create or overwrite a setting; a secret one (``"secret": true``) needs 'manage settings'.

    A secret's value is encrypted at rest and never returned: it can be replaced, not read.
    """
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        action = workspaces.setting_write_action(session, workspace, name, body.secret)
        authorize(caller, action, "settings", workspace, {"setting": name})
        workspaces.put_setting(
            session,
            workspace,
            name,
            body.value,
            secret=body.secret,
            secret_key=resolve_secret_key(context.settings),
        )
        return workspaces.setting_view(workspaces.get_setting(session, workspace, name))


@router.delete("/{ws}/settings/{name}", status_code=204, response_class=Response)
def delete_setting(ws: str, name: str, context: Context, caller: Caller) -> Response:
    """Delete a setting (a secret one needs 'manage settings')."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        existing = workspaces.find_setting(session, workspace, name)
        action = "manage" if existing is not None and existing.secret else "delete"
        authorize(caller, action, "settings", workspace, {"setting": name})
        workspaces.delete_setting(session, workspace, name)
    return Response(status_code=204)
