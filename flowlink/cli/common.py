"""What every ``flowlink`` command shares: consoles, the server/token/JSON options, errors."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console

from flowlink.cli.client import ApiError, Client

console = Console()
err = Console(stderr=True)

ServerOpt = Annotated[
    str | None, typer.Option("--server", envvar="FLOWLINK_SERVER", help="Server URL")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="FLOWLINK_TOKEN", help="API token", show_default=False),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON")]


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error and return the exit to raise."""
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True)
    return typer.Exit(code)


def print_json(data: Any) -> None:
    """Print JSON for scripts."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def call(client: Client, method: str, path: str, **kwargs: Any) -> Any:
    """Call the API, turning errors into a clean exit."""
    try:
        return client.request(method, path, **kwargs)
    except ApiError as exc:
        detail = ""
        if isinstance(exc.details, dict) and exc.details.get("errors"):
            detail = "".join(f"\n  {e['field']}: {e['message']}" for e in exc.details["errors"])
        raise fail(f"{exc.message}{detail}") from None
