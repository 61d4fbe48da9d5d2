"""``flowlink link``: create both ends of a workspace link in one command, and show link status.

A link joins sync config X in workspace A with sync config Y in workspace B. The end with
``remote_url`` connects to the other's sync endpoint; by default it is the controlling end.
With ``--reverse`` the controlled end (behind NAT, say) connects out to the controller.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from flowlink.cli.client import ApiError, Client
from flowlink.cli.common import (
    RSA_KEY_BITS,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    YesOpt,
    call,
    console,
    delete_after_confirm,
    err,
    fail,
    print_json,
    table,
)

if TYPE_CHECKING:
    from flowlink.linking.keys import KeyPair

link_app: typer.Typer = typer.Typer(
    help="Link two workspaces (on one server or two); list, show, change and delete links.",
    no_args_is_help=True,
)
CONTROLLING = "controlling"
CONTROLLED = "controlled"


class LinkError(Exception):
    """A step of ``link create`` failed; the message says where and why."""


@dataclass
class End:
    """One end of a link being made: the server it lives on and the config to create there."""

    direction: str
    client: Client
    workspace: str
    name: str
    public_url: str
    pair: KeyPair | None = None
    view: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``workspace/config on server``, for messages."""
        return f"{self.workspace}/{self.name} on {self.client.server}"

    @property
    def base(self) -> str:
        """The API path of this workspace's sync configs."""
        return f"/api/v1/workspaces/{self.workspace}/sync_config"


def describe(exc: ApiError) -> str:
    """An API error as one readable message, with the fields it names."""
    detail = ""
    if isinstance(exc.details, dict) and exc.details.get("errors"):
        detail = "".join(f"\n  {e['field']}: {e['message']}" for e in exc.details["errors"])
    status = f" (HTTP {exc.status})" if exc.status else ""
    return f"{exc.message}{status}{detail}"


def _request(end: End, method: str, path: str, doing: str, **kwargs: Any) -> Any:
    try:
        return end.client.request(method, path, **kwargs)
    except ApiError as exc:
        raise LinkError(f"{doing} {end.where} failed: {describe(exc)}") from exc


def format_mode(sync_interval: float | None) -> str:
    """``interval N s`` or ``immediate``."""
    return "immediate" if sync_interval is None else f"interval {sync_interval:g} s"


def _resolve_clients(
    from_server: str | None,
    from_token: str | None,
    to_server: str | None,
    to_token: str | None,
    ca_files: list[str] | None = None,
) -> tuple[Client, Client]:
    source = Client(from_server, from_token, ca_files=ca_files)
    target_url = (to_server or source.server).rstrip("/")
    if to_token is None:
        if target_url != source.server:
            # Never send one server's token to another server.
            raise fail(f"--to-token (or FLOWLINK_TO_TOKEN) is needed for {target_url}")
        to_token = source.token
    return source, Client(target_url, to_token, ca_files=ca_files)


def _preflight(ends: list[End]) -> None:
    """Check both servers answer, both workspaces exist and neither name is taken."""
    for end in ends:
        existing = _request(end, "GET", end.base, "reading the sync configs of")
        if any(item["name"] == end.name for item in existing["items"]):
            raise LinkError(
                f"sync config {end.name!r} already exists in workspace {end.workspace!r} on"
                f" {end.client.server}; choose another with"
                f" {'--name' if end.direction == CONTROLLING else '--remote-name'}"
            )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def save_keys(directory: Path, ends: list[End]) -> list[Path]:
    """Write each end's key pair as ``WS.NAME.key`` / ``WS.NAME.pub`` (mode 0600); no overwrite."""
    directory.mkdir(parents=True, exist_ok=True)
    planned = []
    for end in ends:
        assert end.pair is not None
        stem = f"{end.workspace}.{end.name}"
        planned += [
            (directory / f"{stem}.key", end.pair.private_pem),
            (directory / f"{stem}.pub", end.pair.public_pem),
        ]
    taken = [str(path) for path, _ in planned if path.exists()]
    if taken:
        raise LinkError(f"{', '.join(taken)} exists; choose another --save-keys folder")
    written: list[Path] = []
    try:
        for path, text in planned:
            _write_private(path, text)
            written.append(path)
    except OSError as exc:
        for path in written:
            path.unlink(missing_ok=True)
        raise LinkError(f"cannot write keys to {directory}: {exc}") from exc
    return written


def create_link(
    controlling: End,
    controlled: End,
    *,
    reverse: bool,
    settings: dict[str, Any],
    tls: dict[str, Any],
    role: str | None = None,
) -> tuple[End, End]:
    """Create the answering end, then the connecting end; undo the first if the second fails.

    ``settings`` go to both ends, ``tls`` only to the connecting end, ``role`` (the role
    remote runs get) only to the controlled end. Returns
    ``(connecting, answering)`` with their views filled in.
    """
    connecting, answering = (controlled, controlling) if reverse else (controlling, controlled)
    assert connecting.pair is not None and answering.pair is not None

    def body(end: End, other: End) -> dict[str, Any]:
        assert end.pair is not None and other.pair is not None
        return {
            "name": end.name,
            "own_private_key": end.pair.private_pem,
            "remote_public_key": other.pair.public_pem,
            "direction": end.direction,
            **settings,
            **({"role": role} if role and end.direction == CONTROLLED else {}),
        }

    answering.view = _request(
        answering, "POST", answering.base, "creating", json=body(answering, connecting)
    )
    remote_url = answering.public_url.rstrip("/") + answering.view["sync_endpoint"]
    try:
        connecting.view = _request(
            connecting,
            "POST",
            connecting.base,
            "creating",
            json={**body(connecting, answering), "remote_url": remote_url, **tls},
        )
    except BaseException as exc:
        problems = [str(exc) or type(exc).__name__]
        undo = [answering]
        cause = exc.__cause__
        if isinstance(cause, ApiError) and cause.status is None:
            undo.append(connecting)  # no answer: it may have been created all the same
        for end in undo:
            try:
                end.client.request("DELETE", f"{end.base}/{end.name}")
                if end is answering:
                    problems.append(f"removed {end.where} again: nothing is left half-made")
            except ApiError as undo_exc:
                if undo_exc.status != 404:
                    problems.append(
                        f"could not remove {end.where} again ({describe(undo_exc)});"
                        " delete it by hand"
                    )
        if not isinstance(exc, Exception):
            raise
        raise LinkError("\n".join(problems)) from exc
    return connecting, answering


def _say(text: str) -> None:
    # soft_wrap: URLs, fingerprints and paths stay whole, so they can be copied.
    console.print(text, highlight=False, markup=False, soft_wrap=True)


def _print_summary(
    controlling: End, controlled: End, connecting: End, saved: list[Path], bits: int
) -> None:
    mode = format_mode(controlling.view.get("sync_interval"))
    reverse = connecting is controlled
    _say(
        f"linked {controlling.workspace} ({controlling.client.server}) and"
        f" {controlled.workspace} ({controlled.client.server}):"
        f" {controlling.workspace} controls {controlled.workspace}, {mode}"
    )
    for end in (controlling, controlled):
        view = end.view
        _say(f"  {end.direction:<12} {end.where}")
        if view.get("remote_url"):
            _say(f"      connects to  {view['remote_url']}")
        else:
            _say(f"      answers at   {view['sync_endpoint']}")
        _say(f"      own key      {view['own_public_key_fingerprint']}")
        remote = ", ".join(view["remote_public_key_fingerprints"])
        _say(f"      remote key   {remote}")
        if view.get("send_all_executions"):
            _say("      send all executions: yes")
        for warning in view.get("warnings") or []:
            _say(f"      warning: {warning}")
    if reverse:
        _say(
            f"  reverse connect: {controlled.workspace} connects out to {controlling.workspace},"
            f" so only {controlling.client.server} needs to be reachable"
        )
    if saved:
        _say(f"  keys ({bits} bits) saved, mode 0600:")
        for path in saved:
            _say(f"    {path}")


def _end_json(end: End) -> dict[str, Any]:
    return {"server": end.client.server, "workspace": end.workspace, **end.view}


@link_app.command("create")
def link_create(
    from_workspace: Annotated[
        str, typer.Option("--from-workspace", help="Workspace that controls (starts executions)")
    ],
    to_workspace: Annotated[
        str, typer.Option("--to-workspace", help="Workspace that is controlled")
    ],
    from_server: Annotated[
        str | None,
        typer.Option(
            "--from-server",
            envvar="FLOWLINK_SERVER",
            help="Server of the controlling workspace (default: FLOWLINK_SERVER / saved login)",
        ),
    ] = None,
    from_token: Annotated[
        str | None,
        typer.Option(
            "--from-token",
            envvar="FLOWLINK_FROM_TOKEN",
            help="Organization admin token there (default: FLOWLINK_TOKEN / saved login)",
            show_default=False,
        ),
    ] = None,
    to_server: Annotated[
        str | None,
        typer.Option(
            "--to-server", help="Server of the controlled workspace (default: --from-server)"
        ),
    ] = None,
    to_token: Annotated[
        str | None,
        typer.Option(
            "--to-token",
            envvar="FLOWLINK_TO_TOKEN",
            help="Organization admin token there (default: --from-token on the same server)",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Config name in the controlling workspace (default: --to-workspace)"
        ),
    ] = None,
    remote_name: Annotated[
        str | None,
        typer.Option(
            "--remote-name",
            help="Config name in the controlled workspace (default: --from-workspace)",
        ),
    ] = None,
    reverse: Annotated[
        bool,
        typer.Option(
            "--reverse",
            help="Reverse connect: the controlled side connects out (it may be behind NAT)",
        ),
    ] = False,
    sync_interval: Annotated[
        float | None,
        typer.Option(
            "--sync-interval", help="Exchange every N seconds (default: immediate)", min=0.001
        ),
    ] = None,
    send_all_executions: Annotated[
        bool,
        typer.Option(
            "--send-all-executions",
            help="Mirror every execution of the controlling workspace to the controlled one",
        ),
    ] = False,
    ca_certificate: Annotated[
        Path | None,
        typer.Option(
            "--ca-certificate",
            help="CA certificate (PEM) the connecting side trusts for the https server; this"
            " command trusts it too for its own requests",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
    verify_ssl: Annotated[
        bool,
        typer.Option(
            "--verify-ssl/--no-verify-ssl", help="Verify the TLS certificate of the answering side"
        ),
    ] = True,
    public_url: Annotated[
        str | None,
        typer.Option(
            "--public-url",
            help="URL the connecting side reaches the answering server under"
            " (default: its --to-server, or --from-server with --reverse)",
        ),
    ] = None,
    save_keys_to: Annotated[
        Path | None,
        typer.Option(
            "--save-keys",
            help="Also write the generated key pairs to this folder (mode 0600)",
            file_okay=False,
        ),
    ] = None,
    bits: Annotated[int, typer.Option("--bits", help="RSA key size", min=2048)] = RSA_KEY_BITS,
    role: Annotated[
        str | None,
        typer.Option(
            "--role",
            help="Role that runs started through the link get in the controlled workspace"
            " (default: editor)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create both ends of a link, with a fresh key pair each; nothing is left half-made."""
    source, target = _resolve_clients(
        from_server,
        from_token,
        to_server,
        to_token,
        [str(ca_certificate)] if ca_certificate else None,
    )
    name = name or to_workspace
    remote_name = remote_name or from_workspace
    if (source.server, from_workspace, name) == (target.server, to_workspace, remote_name):
        raise fail("both ends would be the same sync config; pass --name or --remote-name")
    ca_text = ca_certificate.read_text() if ca_certificate else None
    controlling = End(CONTROLLING, source, from_workspace, name, source.server)
    controlled = End(CONTROLLED, target, to_workspace, remote_name, target.server)
    if public_url:
        (controlling if reverse else controlled).public_url = public_url
    settings: dict[str, Any] = {"send_all_executions": send_all_executions}
    if sync_interval is not None:
        settings["sync_interval"] = sync_interval
    tls: dict[str, Any] = {"verify_ssl": verify_ssl}
    if ca_text:
        tls["ca_certificate"] = ca_text
    from flowlink.linking.keys import generate_key_pair

    saved: list[Path] = []
    try:
        _preflight([controlling, controlled])
        controlling.pair = generate_key_pair(bits)
        controlled.pair = generate_key_pair(bits)
        if save_keys_to is not None:
            saved = save_keys(save_keys_to, [controlling, controlled])
        connecting, _ = create_link(
            controlling, controlled, reverse=reverse, settings=settings, tls=tls, role=role
        )
    except LinkError as exc:
        for path in saved:
            path.unlink(missing_ok=True)
        raise fail(escape(str(exc))) from None
    if as_json:
        print_json(
            {
                "controlling": _end_json(controlling),
                "controlled": _end_json(controlled),
                "connecting": connecting.direction,
                "reverse": reverse,
                "saved_keys": [str(path) for path in saved],
            }
        )
        return
    _print_summary(controlling, controlled, connecting, saved, bits)


# --- status -----------------------------------------------------------------------------------


STATE_STYLES: dict[Any, str] = {
    True: "[green]connected[/green]",
    False: "[red]disconnected[/red]",
}


def status_cells(view: dict[str, Any]) -> dict[str, str]:
    """The status cells (rich markup) of one sync config view, by column name."""
    state = view.get("state") or {}
    outbox = view.get("outbox_depth")
    text = {
        "name": view["name"],
        "enabled": "yes" if view["enabled"] else "no",
        "direction": view["direction"],
        "connects": view.get("remote_url") or "answers",
        "mode": format_mode(view.get("sync_interval")),
        "state": "-",
        "last exchange": str(state.get("last_exchange_at") or "-"),
        "outbox": "-" if outbox is None else str(outbox),
        "last error": str(state.get("last_error") or ""),
        "own fingerprint": view.get("own_public_key_fingerprint") or "-",
        "remote fingerprints": "\n".join(view.get("remote_public_key_fingerprints") or []) or "-",
    }
    cells = {key: escape(value) for key, value in text.items()}
    cells["state"] = STATE_STYLES.get(state.get("connected"), "-")
    if not view["enabled"]:
        cells["enabled"] = "[yellow]no[/yellow]"
    return cells


def status_table(views: list[dict[str, Any]]) -> Table:
    """One row per sync config."""
    table = Table()
    for column in ("name", "enabled", "direction", "connects", "mode", "state"):
        table.add_column(column, no_wrap=column in ("name", "connects"))
    table.add_column("last exchange")
    table.add_column("outbox", justify="right")
    table.add_column("last error", overflow="fold")
    table.add_column("own fingerprint", no_wrap=True)
    table.add_column("remote fingerprints", no_wrap=True)
    for view in views:
        table.add_row(*status_cells(view).values())
    return table


def status_cards(views: list[dict[str, Any]]) -> Group:
    """One two-column table per sync config, for terminals too narrow for the wide table."""
    cards = []
    for view in views:
        card = Table(title=view["name"], show_header=False, title_justify="left")
        card.add_column("field", style="bold")
        card.add_column("value", overflow="fold")
        for key, value in status_cells(view).items():
            if key != "name":
                card.add_row(key, value)
        cards.append(card)
    return Group(*cards)


@link_app.command("status")
def link_status(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    name: Annotated[str | None, typer.Argument(help="Only this sync config")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a workspace's links: direction, mode, connection state, outbox and key fingerprints."""
    client = Client(server, token)
    base = f"/api/v1/workspaces/{workspace}/sync_config"
    views = [call(client, "GET", f"{base}/{name}")] if name else call(client, "GET", base)["items"]
    if as_json:
        print_json(views)
        return
    if not views:
        err.print(f"no sync configs in workspace {workspace}", highlight=False)
        return
    table = status_table(views)
    needed = Measurement.get(console, console.options.update_width(10_000), table).minimum
    if needed <= console.width:
        console.print(table, highlight=False)
    else:
        console.print(status_cards(views), highlight=False)


# --- list, show, change, delete ---------------------------------------------------------------

WorkspaceArg = Annotated[str, typer.Argument(help="Workspace slug")]
NameArg = Annotated[str, typer.Argument(help="Sync config name")]


def _config_path(workspace: str, name: str | None = None) -> str:
    base = f"/api/v1/workspaces/{workspace}/sync_config"
    return f"{base}/{name}" if name else base


@link_app.command("list")
def link_list(
    workspace: WorkspaceArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's sync configs (one line each; see status for everything)."""
    views = call(Client(server, token), "GET", _config_path(workspace))["items"]
    if as_json:
        print_json(views)
        return
    rows = table("name", "direction", "enabled", "state", "connects", keep=("enabled", "state"))
    for view in views:
        cells = status_cells(view)
        rows.add_row(
            cells["name"], cells["direction"], cells["enabled"], cells["state"], cells["connects"]
        )
    console.print(rows, highlight=False)


@link_app.command("show")
def link_show(
    workspace: WorkspaceArg,
    name: NameArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one sync config: every field (keys as fingerprints) and its state."""
    view = call(Client(server, token), "GET", _config_path(workspace, name))
    if as_json:
        print_json(view)
        return
    console.print(status_cards([view]), highlight=False)


def _patch(
    workspace: str, name: str, body: dict[str, Any], server: str | None, token: str | None
) -> dict[str, Any]:
    if not body:
        raise fail("nothing to change: give at least one option (see --help)")
    result: dict[str, Any] = call(
        Client(server, token), "PATCH", _config_path(workspace, name), json=body
    )
    return result


def _read_file(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


FileOpt = dict(exists=True, dir_okay=False, readable=True)


@link_app.command("update")
def link_update(
    workspace: WorkspaceArg,
    name: NameArg,
    remote_url: Annotated[
        str | None, typer.Option("--remote-url", help="The other end's sync endpoint URL")
    ] = None,
    sync_interval: Annotated[
        float | None,
        typer.Option("--sync-interval", help="Exchange every N seconds", min=0.001),
    ] = None,
    immediate: Annotated[
        bool, typer.Option("--immediate", help="Exchange as soon as a change occurs")
    ] = False,
    send_all_executions: Annotated[
        bool | None,
        typer.Option(
            "--send-all-executions/--no-send-all-executions",
            help="Mirror every execution of the controlling workspace",
            show_default=False,
        ),
    ] = None,
    send_all_meaning: Annotated[
        str | None,
        typer.Option(
            "--send-all-meaning",
            help="mirror (v8: mirror every execution to the controlled workspace) or list"
            " (older: list the runs started through the link here only when set)",
        ),
    ] = None,
    verify_ssl: Annotated[
        bool | None,
        typer.Option(
            "--verify-ssl/--no-verify-ssl",
            help="Verify the TLS certificate of the other end",
            show_default=False,
        ),
    ] = None,
    ca_certificate: Annotated[
        Path | None,
        typer.Option("--ca-certificate", help="CA certificate (PEM) to trust", **FileOpt),
    ] = None,
    own_private_key: Annotated[
        Path | None,
        typer.Option(
            "--own-private-key",
            help="File with this end's new private key",
            **FileOpt,
        ),
    ] = None,
    remote_public_key: Annotated[
        Path | None,
        typer.Option(
            "--remote-public-key",
            help="File with the other end's public key(s)",
            **FileOpt,
        ),
    ] = None,
    role: Annotated[
        str | None, typer.Option("--role", help="Role of runs started through the link")
    ] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change fields of one end of a link; what is not given stays as it is."""
    if immediate and sync_interval is not None:
        raise fail("--immediate and --sync-interval exclude each other")
    body: dict[str, Any] = {
        key: value
        for key, value in {
            "remote_url": remote_url,
            "sync_interval": sync_interval,
            "send_all_executions": send_all_executions,
            "send_all_executions_meaning": send_all_meaning,
            "verify_ssl": verify_ssl,
            "ca_certificate": _read_file(ca_certificate),
            "own_private_key": _read_file(own_private_key),
            "remote_public_key": _read_file(remote_public_key),
            "role": role,
        }.items()
        if value is not None
    }
    if immediate:
        body["sync_interval"] = None
    view = _patch(workspace, name, body, server, token)
    if as_json:
        print_json(view)
        return
    console.print(f"updated {workspace}/{name}: {', '.join(sorted(body))}", highlight=False)


def _set_enabled(
    workspace: str, name: str, enabled: bool, server: str | None, token: str | None, as_json: bool
) -> None:
    view = _patch(workspace, name, {"enabled": enabled}, server, token)
    if as_json:
        print_json(view)
        return
    state = "enabled" if view["enabled"] else "disabled"
    console.print(f"{workspace}/{name} {state}", highlight=False)


@link_app.command("enable")
def link_enable(
    workspace: WorkspaceArg,
    name: NameArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Enable one end of a link (it exchanges again)."""
    _set_enabled(workspace, name, True, server, token, as_json)


@link_app.command("disable")
def link_disable(
    workspace: WorkspaceArg,
    name: NameArg,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Disable one end of a link: it stops exchanging and rejects the other end's requests."""
    _set_enabled(workspace, name, False, server, token, as_json)


@link_app.command("delete")
def link_delete(
    workspace: WorkspaceArg,
    name: NameArg,
    yes: YesOpt = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Delete one end of a link (delete the other end on its server too)."""
    what = f"sync config {workspace}/{name}"
    path = _config_path(workspace, name)
    delete_after_confirm(Client(server, token), path, yes, asking=what, deleted=what)
