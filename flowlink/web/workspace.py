"""Workspace pages: the overview with its charts, and settings with the rendered config."""

from __future__ import annotations

import json
import os
import re
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flowlink.access.policy import allows, authorize
from flowlink.errors import Invalid
from flowlink.events import service as events
from flowlink.executions import service as executions
from flowlink.linking import service as linking
from flowlink.settings import resolve_secret_key
from flowlink.store.models import utcnow
from flowlink.timestamps import format_timestamp
from flowlink.web.render import histogram, render
from flowlink.web.routes import Post, Viewer, see_other, workspace_for
from flowlink.web.session import WebRoute, context_of
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.templating import env_overrides

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)
WINDOWS = {"1h": timedelta(hours=1), "24h": timedelta(hours=24), "7d": timedelta(days=7)}
SECRET_NAME = re.compile(r"(pass|secret|token|key|credential|private)", re.IGNORECASE)
MASK = "••••••••"


def link_rows(session: Any, workspace: Any) -> list[dict[str, Any]]:
    """The workspace's sync configs as the console shows them (keys as fingerprints only),
    each with the last ``sync.rejected`` event recorded for it on this end."""
    configs = linking.list_sync_configs(session, workspace)
    rejections = events.newest_by_payload(
        session,
        workspace,
        events.EventFilter(types=("sync.rejected",)),
        "syncConfig",
        [config.name for config in configs],
    )
    rows = linking.sync_config_views(session, configs, workspace.slug)
    for config, view in zip(configs, rows, strict=True):
        rejected = rejections.get(config.name)
        view["last_rejection"] = (
            {**(rejected.payload or {}), "at": format_timestamp(rejected.created_at)}
            if rejected is not None
            else None
        )
    return rows


@router.get("/w/{ws}")
def overview(request: Request, ws: str, user: Viewer, window: str = "24h") -> Response:
    """Executions and events over a selectable window, counts by status, failures, links."""
    error = ""
    if window not in WINDOWS:
        error, window = f"window: one of {', '.join(WINDOWS)}", "24h"
    now = utcnow()
    since = now - WINDOWS[window]
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws)
        data: dict[str, Any] = {"counts": {}, "failures": [], "links": None}
        if allows(user, "read", "executions", workspace):
            data["counts"] = executions.status_counts(session, [workspace.id], since)[workspace.id]
            data["runs"] = histogram(
                executions.created_times(session, workspace, since), since, now
            )
            data["failures"] = [
                executions.execution_view(e, ws)
                for e in executions.list_executions(session, workspace, status="error", limit=5)
                if allows(user, "read", "executions", workspace, {"flow": e.flow_name})
            ]
        if allows(user, "read", "events", workspace):
            times = events.recent_times(session, workspace, events.EventFilter(after=since))
            data["events"] = histogram(times, since, now)
        if allows(user, "read", "sync_configs", workspace):
            data["links"] = link_rows(session, workspace)
        name, description = workspace.name, workspace.description
    return render(
        request,
        "overview.html",
        {
            "ws": ws,
            "nav": "overview",
            "name": name,
            "description": description,
            "window": window,
            "windows": list(WINDOWS),
            "error": error,
            **data,
        },
        status=422 if error else 200,
    )


def _mask_config(value: Any, name: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _mask_config(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_config(v, name) for v in value]
    return MASK if name and SECRET_NAME.search(name) else value


def _settings_page(
    request: Request,
    user: Any,
    ws: str,
    *,
    form: dict[str, str] | None = None,
    error: str = "",
    saved: str = "",
    status: int = 200,
) -> Response:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "settings")
        items = []
        for setting in workspaces.list_settings(session, workspace):
            if not allows(user, "read", "settings", workspace, {"setting": setting.name}):
                continue
            view = workspaces.setting_view(setting)  # a secret setting's value is masked
            secret = view["secret"] or bool(SECRET_NAME.search(setting.name))
            items.append(
                {
                    "name": setting.name,
                    "secret": secret,
                    "value": MASK if secret else json.dumps(view["value"]),
                    "updated_at": setting.updated_at,
                }
            )
        from_env = env_overrides(ws, os.environ)
        config = [
            {
                "key": key,
                "value": json.dumps(MASK if key in from_env else _mask_config(value, key)),
                "from_env": key in from_env,
            }
            for key, value in sorted(workspaces.masked_config(workspace).items())
        ]
        can_edit = allows(user, "update", "settings", workspace)
    return render(
        request,
        "settings.html",
        {
            "ws": ws,
            "nav": "settings",
            "items": items,
            "config": config,
            "can_edit": can_edit,
            "form": form or {"name": "", "value": ""},
            "error": error,
            "saved": saved,
        },
        status=status,
    )


@router.get("/w/{ws}/settings")
def settings_page(request: Request, ws: str, user: Viewer, saved: str = "") -> Response:
    """Settings (secret-looking values masked) and the rendered config (env values masked)."""
    return _settings_page(request, user, ws, saved=saved)


@router.post("/w/{ws}/settings")
async def save_setting(request: Request, ws: str, sent: Post) -> Response:
    """Create or overwrite a setting from the form (the value is JSON; plain text is a string)."""
    name, raw = sent.text("name").strip(), sent.text("value")

    def save() -> None:
        with context_of(request).store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "settings")
            action = workspaces.setting_write_action(session, workspace, name, None)
            authorize(sent.user, action, "settings", workspace, {"setting": name})
            try:
                value = json.loads(raw) if raw.strip() else None
            except ValueError:
                value = raw
            workspaces.put_setting(
                session,
                workspace,
                name,
                value,
                secret_key=resolve_secret_key(context_of(request).settings),
            )

    try:
        await run_in_threadpool(save)
    except Invalid as error:
        message = error.message
        form = {"name": name, "value": raw}
        return await run_in_threadpool(
            lambda: _settings_page(request, sent.user, ws, form=form, error=message, status=422)
        )
    return see_other(f"/w/{ws}/settings?saved={name}")
