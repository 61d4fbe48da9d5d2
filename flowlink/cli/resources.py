"""``flowlink workspaces|flows|settings``: list, show, change and delete them over the API."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from flowlink.cli.client import Client
from flowlink.cli.common import (
    JsonOpt,
    ServerOpt,
    TokenOpt,
    YesOpt,
    call,
    console,
    delete_after_confirm,
    print_json,
    table,
)

workspaces_app = typer.Typer(help="List, show and delete workspaces.", no_args_is_help=True)
flows_app = typer.Typer(
    help="List, show and delete the flows of a workspace.", no_args_is_help=True
)
settings_app = typer.Typer(
    help="List, show, set and delete the settings of a workspace (secrets stay masked).",
    no_args_is_help=True,
)
WorkspaceArg = Annotated[str, typer.Argument(help="Workspace slug")]


def _field(label: str, value: Any) -> None:
    """One ``label  value`` line; the value is printed as text, never as markup."""
    console.print(f"[bold]{label:>12}[/bold]  ", end="", highlight=False)
    shown = "-" if value is None or value == "" else value
    if not isinstance(shown, str):
        shown = json.dumps(shown)
    console.print(shown, highlight=False, markup=False)


# --- workspaces -------------------------------------------------------------------------------


@workspaces_app.command("list")
def workspaces_list(
    server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False
) -> None:
    """List the workspaces you can see."""
    items = call(Client(server, token), "GET", "/api/v1/workspaces")["items"]
    if as_json:
        print_json(items)
        return
    rows = table("slug", "name", "version", "updated", keep=("slug", "version", "updated"))
    for item in items:
        updated = str(item["updated_at"])[:19].replace("T", " ")
        rows.add_row(item["slug"], item["name"], str(item["version"]), updated)
    console.print(rows, highlight=False)


@workspaces_app.command("show")
def workspaces_show(
    workspace: WorkspaceArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a workspace: name, version, config (values from the environment masked), automations."""
    view = call(Client(server, token), "GET", f"/api/v1/workspaces/{workspace}")
    if as_json:
        print_json(view)
        return
    for key in ("slug", "name", "description", "version", "created_at", "updated_at"):
        _field(key, view.get(key))
    _field("domains", ", ".join(view.get("custom_domains") or []))
    _field("config", view.get("config") or {})
    automations = view.get("automations") or {}
    _field("automations", str(len(automations)))
    for slug, automation in automations.items():
        when = automation.get("when") or {}
        parts = [f"flow {automation['flow']}"]
        if when.get("events"):
            parts.append("events " + ", ".join(when["events"]))
        if when.get("schedules"):
            parts.append("schedules " + ", ".join(when["schedules"]))
        if when.get("endpoint"):
            parts.append("webhook")
        console.print(f"  {slug}: {'; '.join(parts)}", highlight=False, markup=False)


@workspaces_app.command("delete")
def workspaces_delete(
    workspace: WorkspaceArg,
    yes: YesOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a workspace with its flows, settings and executions (its events stay)."""
    delete_after_confirm(
        Client(server, token),
        f"/api/v1/workspaces/{workspace}",
        yes,
        asking=f"workspace {workspace} with all its flows, settings and executions",
        deleted=f"workspace {workspace}",
    )


# --- flows ------------------------------------------------------------------------------------


@flows_app.command("list")
def flows_list(
    workspace: WorkspaceArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's flows."""
    items = call(Client(server, token), "GET", f"/api/v1/workspaces/{workspace}/flows")["items"]
    if as_json:
        print_json(items)
        return
    rows = table("name", "lines", "updated", "description", keep=("lines", "updated"))
    for item in items:
        updated = str(item["updated_at"])[:19].replace("T", " ")
        lines = str(len(str(item["script"]).splitlines()))
        rows.add_row(item["name"], lines, updated, item.get("description") or "")
    console.print(rows, highlight=False)


@flows_app.command("show")
def flows_show(
    workspace: WorkspaceArg,
    name: Annotated[str, typer.Argument(help="Flow name")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a flow's script (with --json: the whole flow)."""
    flow = call(Client(server, token), "GET", f"/api/v1/workspaces/{workspace}/flows/{name}")
    if as_json:
        print_json(flow)
        return
    sys.stdout.write(flow["script"] if flow["script"].endswith("\n") else flow["script"] + "\n")


@flows_app.command("delete")
def flows_delete(
    workspace: WorkspaceArg,
    name: Annotated[str, typer.Argument(help="Flow name")],
    yes: YesOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a flow (its past executions keep their script)."""
    path = f"/api/v1/workspaces/{workspace}/flows/{name}"
    asking = f"flow {name} of {workspace}"
    delete_after_confirm(Client(server, token), path, yes, asking=asking, deleted=f"flow {name}")


# --- settings ---------------------------------------------------------------------------------


def _value_text(item: dict[str, Any]) -> str:
    return item["value"] if item.get("secret") else json.dumps(item["value"])


@settings_app.command("list")
def settings_list(
    workspace: WorkspaceArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's settings; secret values show as ********."""
    path = f"/api/v1/workspaces/{workspace}/settings"
    items = call(Client(server, token), "GET", path)["items"]
    if as_json:
        print_json(items)
        return
    rows = table("name", "kind", "value", keep=("kind",))
    for item in items:
        kind = "secret" if item.get("secret") else "plain"
        value = "-" if item.get("secret") and item["value"] is None else _value_text(item)
        rows.add_row(item["name"], kind, value[:200])
    console.print(rows, highlight=False)


@settings_app.command("show")
def settings_show(
    workspace: WorkspaceArg,
    name: Annotated[str, typer.Argument(help="Setting name")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a setting's value as JSON (a secret's is never shown: ********)."""
    path = f"/api/v1/workspaces/{workspace}/settings/{name}"
    item = call(Client(server, token), "GET", path)
    if as_json:
        print_json(item)
        return
    if item.get("secret"):
        console.print(
            f"{item['value'] or '-'} (secret: it can be replaced, not read)", highlight=False
        )
        return
    sys.stdout.write(json.dumps(item["value"], indent=2) + "\n")


@settings_app.command("set")
def settings_set(
    workspace: WorkspaceArg,
    name: Annotated[str, typer.Argument(help="Setting name")],
    value: Annotated[
        str,
        typer.Argument(help="The value: JSON, else taken as text; '-' reads it from stdin"),
    ],
    secret: Annotated[
        bool | None,
        typer.Option(
            "--secret/--plain",
            help="Make it a secret (encrypted, never shown) or a plain setting"
            " (default: keep its kind; new settings are plain)",
            show_default=False,
        ),
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace a setting. For secrets pass '-' and pipe the value in, so it stays
    out of the shell history."""
    raw = sys.stdin.read().rstrip("\n") if value == "-" else value
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        parsed = raw
    body: dict[str, Any] = {"value": parsed}
    if secret is not None:
        body["secret"] = secret
    path = f"/api/v1/workspaces/{workspace}/settings/{name}"
    item = call(Client(server, token), "PUT", path, json=body)
    if as_json:
        print_json(item)
        return
    kind = "secret " if item.get("secret") else ""
    console.print(f"set {kind}setting {name}", highlight=False)


@settings_app.command("delete")
def settings_delete(
    workspace: WorkspaceArg,
    name: Annotated[str, typer.Argument(help="Setting name")],
    yes: YesOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete a setting."""
    path = f"/api/v1/workspaces/{workspace}/settings/{name}"
    asking = f"setting {name} of {workspace}"
    delete_after_confirm(Client(server, token), path, yes, asking=asking, deleted=f"setting {name}")
