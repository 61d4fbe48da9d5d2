"""Operations commands: ``flowlink workers list`` (over the API) and ``flowlink backup``."""

from __future__ import annotations

import typer
from rich.table import Table

from flowlink.cli.client import Client
from flowlink.cli.common import JsonOpt, ServerOpt, TokenOpt, call, console, print_json

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
            item["lastSeen"],
            item["startedAt"],
        )
    console.print(table)
