"""``flowlink users`` (on the store directly, like ``init``) and ``flowlink tokens`` (the API)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from flowlink.cli.client import Client
from flowlink.cli.common import JsonOpt, ServerOpt, TokenOpt, call, console, fail, print_json
from flowlink.cli.common import table as make_table

if TYPE_CHECKING:
    from flowlink.store.engine import StoreSession

users_app = typer.Typer(
    help="Manage the organization's users (works on the store directly).", no_args_is_help=True
)
tokens_app = typer.Typer(help="Create, list and revoke your API tokens.", no_args_is_help=True)


@contextmanager
def _store_session() -> Iterator[StoreSession]:
    """A write transaction on the store of FLOWLINK_DATABASE_URL; domain errors exit cleanly."""
    from flowlink.assembly import open_store
    from flowlink.errors import FlowlinkError
    from flowlink.settings import ServerSettings

    store = open_store(ServerSettings.from_env())
    try:
        with store.write() as session:
            yield session
    except FlowlinkError as exc:
        raise fail(exc.message) from None
    finally:
        store.dispose()


def _print_user(view: dict[str, Any], as_json: bool, verb: str) -> None:
    if as_json:
        print_json(view)
        return
    console.print(f"user [bold]{view['username']}[/bold] {verb}")
    if "password" in view:
        console.print(f"  password: {view['password']}  (shown once)")


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name")],
    password: Annotated[
        str | None, typer.Option(help="Password (default: generated and printed once)")
    ] = None,
    admin: Annotated[bool, typer.Option("--admin", help="Make an organization admin")] = False,
    workspace: Annotated[
        list[str] | None,
        typer.Option("--role", help="WORKSPACE=ROLE membership (repeatable)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user, optionally with roles in workspaces."""
    from flowlink.access import users

    grants = []
    for pair in workspace or []:
        slug, sep, role = pair.partition("=")
        if not sep or not slug or not role:
            raise fail(f"--role expects WORKSPACE=ROLE, got {pair!r}")
        grants.append((slug, role))
    with _store_session() as session:
        view = users.create_user(session, username, password, is_admin=admin, roles=grants)
    _print_user(view, as_json, "created")


@users_app.command("list")
def users_list(as_json: JsonOpt = False) -> None:
    """List the users with their workspace roles."""
    from flowlink.access import users

    with _store_session() as session:
        views = users.list_users(session)
    if as_json:
        print_json(views)
        return
    table = make_table("username", "admin", "disabled", "roles", keep=("admin", "disabled"))
    for view in views:
        roles = ", ".join(f"{m['workspace']}={m['role']}" for m in view["memberships"])
        table.add_row(
            view["username"],
            "yes" if view["is_admin"] else "",
            "yes" if view["disabled"] else "",
            roles,
        )
    console.print(table)


def _set_disabled(username: str, disabled: bool, as_json: bool) -> None:
    from flowlink.access import users

    with _store_session() as session:
        view = users.set_disabled(session, username, disabled)
    _print_user(view, as_json, "disabled" if disabled else "enabled")


@users_app.command("disable")
def users_disable(
    username: Annotated[str, typer.Argument(help="Login name")], as_json: JsonOpt = False
) -> None:
    """Disable a user: their sessions end and their tokens stop working."""
    _set_disabled(username, True, as_json)


@users_app.command("enable")
def users_enable(
    username: Annotated[str, typer.Argument(help="Login name")], as_json: JsonOpt = False
) -> None:
    """Enable a disabled user again."""
    _set_disabled(username, False, as_json)


@users_app.command("reset-password")
def users_reset_password(
    username: Annotated[str, typer.Argument(help="Login name")],
    password: Annotated[
        str | None, typer.Option(help="New password (default: generated and printed once)")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a new password (their sessions end)."""
    from flowlink.access import users

    with _store_session() as session:
        view = users.reset_password(session, username, password)
    _print_user(view, as_json, "has a new password")


@users_app.command("grant")
def users_grant(
    username: Annotated[str, typer.Argument(help="Login name")],
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    role: Annotated[str, typer.Argument(help="owner, editor, operator, viewer or a custom role")],
    as_json: JsonOpt = False,
) -> None:
    """Give a user a role in a workspace (replacing the one they had)."""
    from flowlink.access import users

    with _store_session() as session:
        view = users.grant(session, username, workspace, role)
    _print_user(view, as_json, f"is {role} in {workspace}")


# --- tokens (over the API) --------------------------------------------------------------------


def _token_row(table: Table, item: dict[str, Any]) -> None:
    table.add_row(
        item["id"],
        item["name"],
        item["workspace"] or "(all)",
        item["role"] or "(own)",
        item["state"],
        item["expires_at"] or "",
    )


@tokens_app.command("create")
def tokens_create(
    name: Annotated[str, typer.Argument(help="A name to recognize the token by")],
    workspace: Annotated[
        str | None, typer.Option("--workspace", "-w", help="Workspace the token is limited to")
    ] = None,
    role: Annotated[str | None, typer.Option(help="Role in that workspace")] = None,
    expires_days: Annotated[
        float | None, typer.Option("--expires-days", help="Expire after this many days")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an API token (its secret is printed once)."""
    body: dict[str, Any] = {"name": name, "workspace": workspace, "role": role}
    if expires_days is not None:
        if expires_days <= 0:
            raise fail("--expires-days must be positive")
        from flowlink.timestamps import format_timestamp

        body["expires_at"] = format_timestamp(datetime.now(UTC) + timedelta(days=expires_days))
    created = call(Client(server, token), "POST", "/api/v1/tokens", json=body)
    if as_json:
        print_json(created)
        return
    console.print(f"token [bold]{created['name']}[/bold] ({created['id']}) created; shown once:")
    console.print(f"  {created['token']}", highlight=False)


@tokens_app.command("list")
def tokens_list(
    all_users: Annotated[
        bool, typer.Option("--all", help="Every user's tokens (organization admin)")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List your API tokens (never their secrets)."""
    page = call(
        Client(server, token), "GET", "/api/v1/tokens", params={"all": str(all_users).lower()}
    )
    if as_json:
        print_json(page["items"])
        return
    table = make_table("id", "name", "workspace", "role", "state", "expires", keep=("id", "state"))
    for item in page["items"]:
        _token_row(table, item)
    console.print(table)


@tokens_app.command("revoke")
def tokens_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (from tokens list)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Revoke an API token."""
    call(Client(server, token), "DELETE", f"/api/v1/tokens/{token_id}")
    if as_json:
        print_json({"id": token_id, "revoked": True})
    else:
        console.print(f"token {token_id} revoked")
