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


class _PlainValueCoercion:
    """Typer's coercion of one parameter, skipped when there is nothing to convert: no value,
    or a value of the parameter's plain ``str`` or ``int`` type. Typer coerces through
    pydantic, whose import is a large part of a short command's start-up; any other value
    (``--limit 5`` arrives as ``"5"``) still goes through typer's own coercion, errors and all."""

    def __init__(self, parameter: Any) -> None:
        self.parameter = parameter
        descriptor = parameter.type_descriptor
        info = descriptor.parameter_info
        plain = (
            descriptor.annotation in (str, int)
            and not parameter.multiple
            and parameter.nargs == 1
            and info.parser is None
            and info.min is None
            and info.max is None
        )
        self.plain: type | None = descriptor.annotation if plain else None
        self.typer_coercion: Any = None

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        """The value, as typer's coercion gives it."""
        if value is None:  # typer's rule for a missing value
            return () if param.multiple or param.nargs == -1 else None
        if self.plain is not None and type(value) is self.plain:
            return value
        if self.typer_coercion is None:
            from typer._coercion import build_runtime_param

            self.typer_coercion = build_runtime_param(self.parameter.type_descriptor)
        return self.typer_coercion.coerce(value, param, ctx)


def _plain_value_coercion(parameter: Any) -> Any:
    """Typer's ``get_runtime_param``, answering with a ``_PlainValueCoercion``."""
    if parameter._runtime_param is None:
        parameter._runtime_param = _PlainValueCoercion(parameter)
    return _typer_runtime_param(parameter)


# Typer releases that coerce with pydantic build it lazily in this method; others lack it.
_typer_parameter: Any = getattr(typer.core, "_TyperParameter", None)
if _typer_parameter is not None and hasattr(_typer_parameter, "get_runtime_param"):
    _typer_runtime_param = _typer_parameter.get_runtime_param
    _typer_parameter.get_runtime_param = _plain_value_coercion


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
