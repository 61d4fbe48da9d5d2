"""Routes for apps: publish a workspace as a version, list apps, install/upgrade/uninstall."""

from __future__ import annotations

import math
import os
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from flowlink.access import policy
from flowlink.api.deps import Caller, Context
from flowlink.api.responses import ApiRoute
from flowlink.apps import service as apps
from flowlink.apps.views import AppList, InstanceList, InstanceView, VersionList, VersionView
from flowlink.workspaces import service as workspaces

router = APIRouter(prefix="/api/v1", tags=["apps"], route_class=ApiRoute)


def _no_nan(value: Any, where: str = "config") -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: NaN and infinities are not JSON values")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nan(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_nan(item, f"{where}[{index}]")
    return value


class PublishBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The new version, e.g. 1.0.0 (never reused)")


class InstanceBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app: str = Field(description="Slug of the published app")
    version: str = Field(description="Version to install (pinned)")
    config: dict[str, Any] = Field(default_factory=dict, description="The instance's config")

    @field_validator("config")
    @classmethod
    def _finite(cls, value: dict[str, Any]) -> dict[str, Any]:
        return dict(_no_nan(value))


@router.post("/workspaces/{ws}/publish", status_code=201, response_model=VersionView)
def publish(ws: str, body: PublishBody, context: Context, caller: Caller) -> dict[str, Any]:
    """Publish the workspace as a new version of the app of the same slug (409 if it exists)."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "create", "apps", workspace, {"app": ws})
        row = apps.publish(session, workspace, body.version, caller.username)
        return apps.version_view(ws, row)


@router.get("/apps", response_model=AppList)
def list_apps(context: Context, caller: Caller) -> dict[str, Any]:
    """Every published app with its versions (who published them and when)."""
    with context.store.read() as session:
        return {
            "items": [
                {"app": app.slug, "versions": [apps.version_view(app.slug, v) for v in versions]}
                for app, versions in apps.list_apps(session)
            ]
        }


@router.get("/apps/{app}/versions", response_model=VersionList)
def list_versions(app: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The versions of one app, oldest first."""
    with context.store.read() as session:
        return {"items": [apps.version_view(app, v) for v in apps.list_versions(session, app)]}


@router.get("/workspaces/{ws}/apps", response_model=InstanceList)
def list_instances(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """The app instances installed in the workspace."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "read", "apps", workspace)
        return {"items": [apps.instance_view(i) for i in apps.list_instances(session, workspace)]}


@router.put("/workspaces/{ws}/apps/{instance}", response_model=InstanceView)
def put_instance(
    ws: str, instance: str, body: InstanceBody, context: Context, caller: Caller
) -> dict[str, Any]:
    """Install an app version as an instance, or upgrade / reconfigure it."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        exists = apps.find_instance(session, workspace, instance) is not None
        action = "update" if exists else "create"
        policy.authorize(caller, action, "apps", workspace, {"app": instance})
        spec = apps.InstanceSpec(instance, body.app, body.version, body.config)
        row, change = apps.install(session, workspace, spec, os.environ)
        return {**apps.instance_view(row), "change": change}


@router.delete("/workspaces/{ws}/apps/{instance}", status_code=204, response_class=Response)
def delete_instance(ws: str, instance: str, context: Context, caller: Caller) -> Response:
    """Uninstall an instance."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        policy.authorize(caller, "delete", "apps", workspace, {"app": instance})
        apps.uninstall(session, workspace, instance)
    return Response(status_code=204)
