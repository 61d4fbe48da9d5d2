"""``flowlink apps``: publish a workspace as an app version, list apps, install instances."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from flowlink.cli.client import Client
from flowlink.cli.common import JsonOpt, ServerOpt, TokenOpt, call, console, fail, print_json

apps_app: typer.Typer = typer.Typer(
    help="Publish apps, list them, install, upgrade and uninstall instances.",
    no_args_is_help=True,
)


@apps_app.command("publish")
def publish(
    workspace: Annotated[str, typer.Argument(help="Workspace to publish (the app's slug)")],
    version: Annotated[str, typer.Option("--version", help="The new version, e.g. 1.0.0")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish WORKSPACE as a new, immutable version of the app of the same slug."""
    result = call(
        Client(server, token),
        "POST",
        f"/api/v1/workspaces/{workspace}/publish",
        json={"version": version},
    )
    if as_json:
        print_json(result)
    else:
        console.print(f"published {result['app']} {result['version']}")


@apps_app.command("list")
def list_apps(server: ServerOpt = None, token: TokenOpt = None, as_json: JsonOpt = False) -> None:
    """Every published app and its versions."""
    result = call(Client(server, token), "GET", "/api/v1/apps")
    if as_json:
        print_json(result)
        return
    table = Table("app", "version", "published by", "published at")
    for item in result["items"]:
        for version in item["versions"]:
            table.add_row(
                item["app"],
                version["version"],
                str(version["published_by"] or ""),
                str(version["published_at"]),
            )
    console.print(table)


def _config(values: list[str] | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    for item in values or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise fail(f"--config {item!r}: use KEY=VALUE (VALUE is JSON, or else a string)")
        try:
            config[key] = json.loads(raw)
        except ValueError:
            config[key] = raw
    return config


@apps_app.command("install")
def install(
    workspace: Annotated[str, typer.Argument(help="Workspace to install into")],
    instance: Annotated[str, typer.Argument(help="Slug of the instance")],
    app: Annotated[str, typer.Option("--app", help="Slug of the published app")],
    version: Annotated[str, typer.Option("--version", help="Version to install")],
    config: Annotated[
        list[str] | None, typer.Option("--config", help="KEY=VALUE of the instance config")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Install an app version as INSTANCE (or upgrade / reconfigure it)."""
    result = call(
        Client(server, token),
        "PUT",
        f"/api/v1/workspaces/{workspace}/apps/{instance}",
        json={"app": app, "version": version, "config": _config(config)},
    )
    if as_json:
        print_json(result)
    else:
        console.print(
            f"{instance}: {result['app']} {result['version']} ({result['change'] or 'unchanged'})"
        )


@apps_app.command("uninstall")
def uninstall(
    workspace: Annotated[str, typer.Argument(help="Workspace")],
    instance: Annotated[str, typer.Argument(help="Slug of the instance")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Uninstall INSTANCE."""
    call(Client(server, token), "DELETE", f"/api/v1/workspaces/{workspace}/apps/{instance}")
    console.print(f"{instance}: uninstalled")
