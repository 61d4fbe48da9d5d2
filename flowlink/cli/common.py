"""What every ``flowlink`` command shares: consoles, the server/token/JSON options, errors."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.table import Table

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
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation")]
# The default of the key-generating commands: flowlink.linking.keys.DEFAULT_RSA_BITS, repeated
# here so that parsing their options does not import cryptography (a test keeps them equal).
RSA_KEY_BITS = 3072


def _help_metavar(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """The value placeholder ``--help`` shows: none for a flag, else the option's name
    (``--server SERVER``) instead of Typer's ``<str>``/``<bool>`` type names."""
    if self.metavar is not None:
        return str(self.metavar)
    if self.is_flag or self.count:
        return None
    return (self.name or "value").upper().replace("_", "-")


def _no_metavar(self: typer.core.TyperArgument, ctx: Any) -> str | None:
    """Arguments are shown by name (``WORKSPACE``) only, without a ``<str>`` type column."""
    return None


typer.core.TyperOption.display_type_rich = _help_metavar  # type: ignore[method-assign]
typer.core.TyperArgument.display_type_rich = _no_metavar  # type: ignore[method-assign,assignment]


def table(*columns: str, keep: tuple[str, ...] = ()) -> Table:
    """A table for 80-column terminals: the ``keep`` columns are never wrapped or cut
    (statuses, ids, times), the others fold their text onto more lines."""
    result = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        if column in keep:
            result.add_column(column, no_wrap=True, overflow="ignore")
        else:
            result.add_column(column, overflow="fold")
    return result


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


def delete_after_confirm(
    client: Client, path: str, yes: bool, *, asking: str, deleted: str
) -> None:
    """Ask "delete <asking>?" (unless ``yes``), DELETE ``path``, print "deleted <deleted>"."""
    if not yes and not typer.confirm(f"delete {asking}?", default=False, err=True):
        raise fail("nothing deleted")
    call(client, "DELETE", path)
    console.print(f"deleted {deleted}", highlight=False)
