"""The ``flowlink`` command line."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flowlink import __version__
from flowlink.cli import client as client_module
from flowlink.cli.access import tokens_app, users_app
from flowlink.cli.apps import apps_app
from flowlink.cli.client import CA_BUNDLE_ENV, ApiError, Client
from flowlink.cli.common import (
    RSA_KEY_BITS,
    JsonOpt,
    ServerOpt,
    TokenOpt,
    call,
    console,
    err,
    fail,
    print_json,
    table,
)
from flowlink.cli.events import events_app
from flowlink.cli.link import link_app
from flowlink.cli.operations import backup_command, restore_command, workers_app
from flowlink.cli.resources import flows_app, settings_app, workspaces_app
from flowlink.execution_status import ExecutionStatus, is_ended

app = typer.Typer(
    name="flowlink",
    help="flowlink: self-hosted automation with Python flows, events and linked workspaces.",
    no_args_is_help=True,
    add_completion=False,
)
executions_app = typer.Typer(help="List, show and cancel executions.", no_args_is_help=True)
app.add_typer(executions_app, name="executions")
FOLLOW_WAIT = 10.0  # seconds a log follow request may be held by the server


def _version(value: bool) -> None:
    if value:
        console.print(f"flowlink {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit"
        ),
    ] = False,
    ca_certificate: Annotated[
        list[Path] | None,
        typer.Option(
            "--ca-certificate",
            help="CA certificate (PEM) to trust for the servers this command talks to, besides"
            f" the system's (repeatable; also {CA_BUNDLE_ENV})",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ] = None,
) -> None:
    """flowlink: self-hosted automation with Python flows, events and linked workspaces."""
    client_module.extra_ca_files[:] = [str(path) for path in ca_certificate or []]


# --- processes ------------------------------------------------------------------------------


def announce(log_format: str, message: str) -> None:
    """Say a process is up: on the terminal, or as a log line when logs are JSON."""
    if log_format == "json":
        logging.getLogger("flowlink").info(message)
    else:
        console.print(message)


@app.command()
def server(
    host: Annotated[str, typer.Option(help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on")] = 8080,
    tls_cert: Annotated[
        str | None, typer.Option(help="TLS certificate (PEM) to serve HTTPS")
    ] = None,
    tls_key: Annotated[str | None, typer.Option(help="TLS private key (PEM)")] = None,
    worker: Annotated[bool, typer.Option(help="Run a worker in this process")] = True,
    demo: Annotated[bool, typer.Option(help="Apply the demo workspace and print a login")] = False,
    trusted_proxies: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated addresses or CIDR networks of reverse proxies whose"
            " X-Forwarded-For is believed (default: FLOWLINK_TRUSTED_PROXIES, else none)"
        ),
    ] = None,
) -> None:
    """Run the API server (with a worker) on the store from FLOWLINK_DATABASE_URL."""
    from dataclasses import replace

    from flowlink.observability import metrics, tracing
    from flowlink.observability.logs import adopt_library_loggers, configure_logging
    from flowlink.server import build_server, prepare_demo, serve
    from flowlink.settings import ServerSettings
    from flowlink.settings import trusted_proxies as parse_proxies

    log_format = configure_logging()
    tracing.setup()
    if bool(tls_cert) != bool(tls_key):
        raise fail("--tls-cert and --tls-key go together")
    try:
        settings = ServerSettings.from_env()
        if trusted_proxies is not None:
            settings = replace(settings, trusted_proxies=parse_proxies(trusted_proxies))
    except ValueError as exc:
        raise fail(str(exc)) from exc
    running = build_server(
        settings,
        host=host,
        port=port,
        with_worker=worker,
        tls_cert=tls_cert,
        tls_key=tls_key,
        settle_heap=True,
    )
    adopt_library_loggers()  # uvicorn set up its own loggers while the server was built
    scheme = "https" if tls_cert else "http"
    url = f"{scheme}://{host}:{port}"
    if demo:
        login = prepare_demo(running.context.store, url)
        console.print(f"\n[bold]flowlink[/bold] is starting at [link={url}]{url}[/link]")
        console.print(f"  console:     [link={url}/]{url}/[/link]  (log in with the admin login)")
        if login:
            console.print(f"  admin login: [bold]{login['user']}[/bold] / {login['password']}")
            console.print(f"  API token:   {login['token']}")
        console.print("  try:         .venv/bin/flowlink run demo parent --follow\n")
    else:
        announce(log_format, f"flowlink serving at {url} (store: {running.context.store.dialect})")
    try:
        serve(running)
    finally:
        metrics.process_exited()  # its live gauges leave the host's shared metrics


@app.command("worker")
def worker_command(
    concurrency: Annotated[int | None, typer.Option(help="Executions run at once")] = None,
) -> None:
    """Run an additional worker on the store from FLOWLINK_DATABASE_URL."""
    import signal
    import threading
    from dataclasses import replace

    from flowlink import assembly
    from flowlink.assembly import open_store
    from flowlink.background import BackgroundTasks
    from flowlink.executions.worker import Worker
    from flowlink.observability import metrics, tracing
    from flowlink.observability.logs import configure_logging
    from flowlink.settings import ServerSettings

    log_format = configure_logging()
    tracing.setup()
    settings = ServerSettings.from_env()
    if concurrency:
        settings = replace(settings, worker_concurrency=concurrency)
    store = open_store(settings)
    worker = Worker(store, settings, hooks=assembly.FLOW_HOOKS)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    tasks = BackgroundTasks()
    store.listen(tasks)
    worker.schedule(tasks)
    worker.start()
    tasks.start_in_thread()
    announce(log_format, f"worker {worker.id} running (store: {store.dialect})")
    stop.wait()
    worker.stop()
    tasks.stop_thread()
    store.dispose()
    metrics.process_exited()


@app.command()
def init(
    username: Annotated[str, typer.Option(help="Login name of the organization admin")] = "admin",
    as_json: JsonOpt = False,
    save: Annotated[
        bool, typer.Option(help="Save the token for this CLI (~/.config/flowlink)")
    ] = True,
    server_url: Annotated[
        str, typer.Option("--server", help="Server URL to save with the token")
    ] = "http://127.0.0.1:8080",
) -> None:
    """Create the store and the organization admin; prints the login and an API token once."""
    from flowlink.access.service import init_admin
    from flowlink.assembly import open_store
    from flowlink.credentials import save_credentials
    from flowlink.errors import Conflict
    from flowlink.settings import ServerSettings, resolve_secret_key

    settings = ServerSettings.from_env()
    resolve_secret_key(settings)
    store = open_store(settings)
    try:
        with store.write() as session:
            credentials = init_admin(session, username)
    except Conflict as exc:
        raise fail(f"{exc.message}; this store is already initialized") from None
    finally:
        store.dispose()
    if save:
        save_credentials(server_url, credentials)
    if as_json:
        print_json(
            {"user": credentials.user, "password": credentials.password, "token": credentials.token}
        )
        return
    console.print("Organization admin created. This is shown once:")
    console.print(f"  user:     {credentials.user}")
    console.print(f"  password: {credentials.password}")
    console.print(f"  token:    {credentials.token}")


# --- workspaces -----------------------------------------------------------------------------


@app.command()
def apply(
    directory: Annotated[Path, typer.Argument(help="Workspace folder (with workspace.yml)")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or update a workspace from its folder, all or nothing."""
    from flowlink.workspaces.folder import read_folder
    from flowlink.workspaces.spec import SpecError, parse_bundle

    try:
        files = read_folder(directory)
        slug = parse_bundle(files).spec.slug
    except SpecError as exc:
        raise fail(str(exc)) from None
    client = Client(server, token)
    result = call(client, "POST", f"/api/v1/workspaces/{slug}/apply", json={"files": files})
    if as_json:
        print_json(result)
        return
    verb = "created" if result["created"] else ("updated" if result["changed"] else "unchanged")
    console.print(
        f"workspace [bold]{slug}[/bold] {verb} (version {result['workspace']['version']})"
    )
    for kind, changes in result["changes"].items():
        if changes:
            console.print(f"  {kind}: {', '.join(changes)}")
    for automation, key in (result.get("webhook_keys") or {}).items():
        console.print(f"  webhook key of {automation}: {key} (shown once)")


@app.command()
def export(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    directory: Annotated[Path, typer.Argument(help="Folder to write")],
    server: ServerOpt = None,
    token: TokenOpt = None,
) -> None:
    """Write a workspace back to a folder."""
    from flowlink.workspaces.folder import write_folder

    result = call(Client(server, token), "GET", f"/api/v1/workspaces/{workspace}/export")
    write_folder(directory, result["files"])
    console.print(f"exported {workspace} to {directory} ({len(result['files'])} files)")


# --- running --------------------------------------------------------------------------------


def parse_inputs(pairs: list[str], input_json: str | None) -> dict[str, Any]:
    """Merge ``--input-json`` and ``--input k=v`` (values parsed as JSON when they are JSON)."""
    inputs: dict[str, Any] = {}
    if input_json:
        try:
            loaded = json.loads(input_json)
        except ValueError as exc:
            raise fail(f"--input-json is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise fail("--input-json must be a JSON object")
        inputs.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise fail(f"--input expects key=value, got {pair!r}")
        try:
            inputs[key] = json.loads(raw)
        except ValueError:
            inputs[key] = raw
    return inputs


def follow_execution(
    client: Client, workspace: str, execution_id: str, quiet: bool
) -> dict[str, Any]:
    """Print log lines as they arrive until the execution ends; returns its final record."""
    after = 0
    base = f"/api/v1/workspaces/{workspace}/executions/{execution_id}"
    while True:
        # The server holds the request until a line comes or the execution ends.
        page = call(client, "GET", f"{base}/logs", params={"after": after, "wait": FOLLOW_WAIT})
        for item in page["items"]:
            after = item["id"]
            if not quiet:
                console.print(item["line"], highlight=False, markup=False)
        if is_ended(page["status"]) and not page["items"]:
            return call(client, "GET", base)


@app.command()
def run(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    flow: Annotated[str, typer.Argument(help="Flow name")],
    inputs: Annotated[
        list[str] | None, typer.Option("--input", "-i", help="Input key=value (repeatable)")
    ] = None,
    input_json: Annotated[str | None, typer.Option(help="Inputs as a JSON object")] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream logs until it ends")
    ] = False,
    max_runtime: Annotated[float | None, typer.Option(help="Seconds before it is killed")] = None,
    remote: Annotated[
        str | None,
        typer.Option(help="Run it in the workspace linked by this sync config (see link)"),
    ] = None,
    use_remote_flow: Annotated[
        bool, typer.Option(help="With --remote: run the linked workspace's own flow")
    ] = False,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Start an execution of a flow; --follow streams its logs and exits 1 unless it succeeds."""
    client = Client(server, token)
    body: dict[str, Any] = {"flow": flow, "inputs": parse_inputs(inputs or [], input_json)}
    if max_runtime:
        body["max_runtime"] = max_runtime
    if remote:
        body["remote"] = remote
        body["use_remote_flow"] = use_remote_flow
    elif use_remote_flow:
        raise fail("--use-remote-flow goes with --remote")
    execution = call(client, "POST", f"/api/v1/workspaces/{workspace}/executions", json=body)
    if not follow:
        if as_json:
            print_json(execution)
        else:
            console.print(f"{execution['id']} {execution['status']}")
        return
    if not as_json:
        err.print(f"[dim]execution {execution['id']} started[/dim]")
    final = follow_execution(client, workspace, execution["id"], quiet=as_json)
    if as_json:
        print_json(final)
    else:
        colors = {ExecutionStatus.SUCCESS: "green", ExecutionStatus.ERROR: "red"}
        style = colors.get(final["status"], "yellow")
        err.print(
            f"[{style}]{final['status']}[/{style}]: {final['message'] or ''}", highlight=False
        )
        if final["output_value"]:
            console.print_json(data=final["output_value"])
    if final["status"] != ExecutionStatus.SUCCESS:
        raise typer.Exit(1)


@executions_app.command("list")
def executions_list(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    status: Annotated[str | None, typer.Option(help="Only this status")] = None,
    flow: Annotated[str | None, typer.Option(help="Only this flow")] = None,
    limit: Annotated[int, typer.Option(help="How many")] = 20,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List a workspace's executions, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    if flow:
        params["flow"] = flow
    page = call(
        Client(server, token), "GET", f"/api/v1/workspaces/{workspace}/executions", params=params
    )
    if as_json:
        print_json(page["items"])
        return
    # 80 columns hold id, flow, status, time and duration; wider terminals get the message.
    wide = console.width >= 130
    columns = ["id", "flow", "status", "created", "duration"] + (["message"] if wide else [])
    rows = table(*columns, keep=("id", "status", "created", "duration"))
    for item in page["items"]:
        duration = f"{item['duration']:.2f}s" if item["duration"] is not None else ""
        created = str(item["created_at"] or "")
        created = created[:19].replace("T", " ") if wide else created[5:19].replace("T", " ")
        cells = [item["id"], item["name"], item["status"], created, duration]
        if wide:
            cells.append((item["message"] or "")[:80])
        rows.add_row(*cells)
    console.print(rows, highlight=False)


@executions_app.command("show")
def executions_show(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    execution_id: Annotated[str, typer.Argument(help="Execution id")],
    logs: Annotated[bool, typer.Option(help="Include the log lines")] = True,
    script: Annotated[bool, typer.Option(help="Include the script snapshot")] = True,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show one execution: status, message, inputs, outputs, children, script and logs."""
    client = Client(server, token)
    base = f"/api/v1/workspaces/{workspace}/executions/{execution_id}"
    execution = call(client, "GET", base)
    lines = call(client, "GET", f"{base}/logs", params={"limit": 10000})["items"] if logs else []
    if as_json:
        print_json({**execution, "logs": [line["line"] for line in lines]})
        return
    for key in (
        "id",
        "name",
        "status",
        "message",
        "error_kind",
        "created_at",
        "started_at",
        "ended_at",
        "duration",
        "parent_id",
        "correlation_id",
    ):
        value = execution.get(key)
        shown = "-" if value is None or value == "" else value
        console.print(f"[bold]{key:>14}[/bold]  ", end="", highlight=False)
        console.print(str(shown), highlight=False, markup=False)
    for key, field in (("inputs", "input_value"), ("outputs", "output_value")):
        console.print(f"[bold]{key:>14}[/bold]  ", end="", highlight=False)
        console.print(json.dumps(execution.get(field)), highlight=False, markup=False)
    console.print(f"[bold]{'children':>14}[/bold]  {', '.join(execution['children']) or '-'}")
    if script and execution.get("script"):
        console.print("[bold]script[/bold]")
        for line in str(execution["script"]).splitlines():
            console.print(f"  {line}", highlight=False, markup=False)
    if lines:
        console.print("[bold]logs[/bold]")
        for line in lines:
            console.print(f"  {line['line']}", highlight=False, markup=False)


@executions_app.command("cancel")
def executions_cancel(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    execution_id: Annotated[str, typer.Argument(help="Execution id")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Cancel an execution and its unfinished children; prints the status it ended with."""
    client = Client(server, token)
    base = f"/api/v1/workspaces/{workspace}/executions/{execution_id}"
    result = call(client, "POST", f"{base}/cancel")
    # Cancelling is asynchronous: wait (a little) for the status it really ends with.
    deadline = time.monotonic() + 15
    while not is_ended(result["status"]) and time.monotonic() < deadline:
        time.sleep(0.1)
        result = call(client, "GET", base)
    if as_json:
        print_json(result)
    else:
        console.print(f"{result['id']} {result['status']}")


app.add_typer(workspaces_app, name="workspaces")
app.add_typer(flows_app, name="flows")
app.add_typer(settings_app, name="settings")
app.add_typer(users_app, name="users")
app.add_typer(tokens_app, name="tokens")


app.add_typer(events_app, name="events")
app.add_typer(apps_app, name="apps")
app.add_typer(link_app, name="link")
app.add_typer(workers_app, name="workers")
app.command("backup")(backup_command)
app.command("restore")(restore_command)


keys_app = typer.Typer(help="Key pairs for workspace links.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    name: Annotated[
        Path, typer.Argument(help="Private key file to write; NAME.pub gets the public key")
    ],
    bits: Annotated[int, typer.Option(help="RSA key size")] = RSA_KEY_BITS,
    force: Annotated[bool, typer.Option(help="Overwrite existing files")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write an RSA key pair (PEM; the private file readable by you only), print its fingerprint."""
    import os

    from flowlink.errors import Invalid
    from flowlink.linking.keys import generate_key_pair

    public = name.with_name(name.name + ".pub")
    if not force and (name.exists() or public.exists()):
        raise fail(f"{name} or {public} exists; pass --force to overwrite")
    try:
        pair = generate_key_pair(bits)
    except Invalid as exc:
        raise fail(exc.message) from None
    name.parent.mkdir(parents=True, exist_ok=True)
    if name.exists():
        name.unlink()
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(pair.private_pem)
    public.write_text(pair.public_pem)
    if as_json:
        print_json({"private": str(name), "public": str(public), "fingerprint": pair.fingerprint})
        return
    console.print(f"private key: {name} (mode 0600)")
    console.print(f"public key:  {public}")
    console.print(f"fingerprint: {pair.fingerprint}")


def main() -> None:
    """Entry point of the ``flowlink`` console script."""
    try:
        app()
    except ApiError as exc:  # e.g. an unreadable FLOWLINK_CA_BUNDLE
        raise SystemExit(f"error: {exc.message}") from None


if __name__ == "__main__":
    main()
