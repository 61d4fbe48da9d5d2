"""Operations commands: ``workers list`` (over the API), ``backup`` and ``restore`` (the store)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from flowlink.cli.client import Client
from flowlink.cli.common import JsonOpt, ServerOpt, TokenOpt, call, console, err, fail, print_json

if TYPE_CHECKING:
    from flowlink.store.backup import BackupResult

workers_app = typer.Typer(help="Worker processes and their heartbeat.", no_args_is_help=True)


@workers_app.command("list")
def workers_list(
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List registered workers: running, lost (missed heartbeats) or stopped."""
    items = call(Client(server, token), "GET", "/api/v1/workers")["items"]
    if as_json:
        print_json(items)
        return
    table = Table("id", "status", "host", "pid", "busy", "concurrency", "last seen", "started")
    colors = {"running": "green", "lost": "red", "stopped": "dim"}
    for item in items:
        status = item["status"]
        table.add_row(
            item["id"],
            f"[{colors.get(status, 'white')}]{status}[/]",
            item["host"],
            str(item["pid"]),
            str(item["busy"]),
            str(item["concurrency"]),
            item["last_seen"],
            item["started_at"],
        )
    console.print(table)


def _key_note() -> str:
    from flowlink.settings import ServerSettings, secret_key_path

    settings = ServerSettings.from_env()
    where = "FLOWLINK_SECRET_KEY" if settings.secret_key else str(secret_key_path(settings))
    return (
        f"the secret key ({where}) is not in the backup: private keys and secrets in the store"
        " can only be read with it, so keep a copy of it apart from the backup"
    )


def backup_command(
    file: Annotated[Path, typer.Argument(help="File to write the backup to")],
    force: Annotated[bool, typer.Option(help="Overwrite FILE if it exists")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up the store from FLOWLINK_DATABASE_URL while it runs (SQLite or pg_dump)."""
    from flowlink.errors import FlowlinkError
    from flowlink.settings import ServerSettings
    from flowlink.store.backup import backup

    settings = ServerSettings.from_env()
    try:
        result = backup(settings.database_url, file, overwrite=force)
    except FlowlinkError as error:
        raise fail(error.message) from None
    _report(result, "backup written", as_json)


def restore_command(
    file: Annotated[Path, typer.Argument(help="Backup file made by 'flowlink backup'")],
    force: Annotated[bool, typer.Option(help="Replace a store that has data")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Replace the store from FLOWLINK_DATABASE_URL with a backup (stop servers and workers)."""
    from flowlink.errors import FlowlinkError
    from flowlink.settings import ServerSettings
    from flowlink.store.backup import restore

    settings = ServerSettings.from_env()
    try:
        result = restore(settings.database_url, file, overwrite=force)
    except FlowlinkError as error:
        raise fail(error.message) from None
    _report(result, "store restored", as_json)


def _report(result: BackupResult, what: str, as_json: bool) -> None:
    err.print(f"note: {_key_note()}", highlight=False)
    if as_json:
        print_json(
            {
                "file": str(result.path),
                "size": result.size,
                "store": result.dialect,
                "revision": result.revision,
            }
        )
        return
    revision = f", schema {result.revision}" if result.revision else ""
    console.print(f"{what}: {result.path} ({result.size} bytes, {result.dialect}{revision})")
