"""``flowlink events``: search, tail, emit, cleanup, and webhook keys."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from flowlink.cli.client import ApiError, Client
from flowlink.cli.common import JsonOpt, ServerOpt, TokenOpt, call, console, fail, print_json
from flowlink.cli.common import table as make_table

events_app: typer.Typer = typer.Typer(
    help="Search, follow, emit and clean up events.", no_args_is_help=True
)
TypesOpt = Annotated[
    str | None, typer.Option("--types", help="Comma list of types; 'executions.*' for a prefix")
]
TextOpt = Annotated[str | None, typer.Option("--text", help="Full-text search")]
CorrelationOpt = Annotated[str | None, typer.Option("--correlation-id", help="Correlation id")]
MatchOpt = Annotated[
    list[str] | None,
    typer.Option("--match", help="source.<field>=value or payload.<path>=value (repeatable)"),
]


def _params(
    types: str | None,
    text: str | None,
    correlation_id: str | None,
    matches: list[str] | None,
    after: str | None = None,
    before: str | None = None,
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if types:
        params["types"] = types
    if text:
        params["text"] = text
    if correlation_id:
        params["correlationId"] = correlation_id
    if after:
        params["afterDate"] = after
    if before:
        params["beforeDate"] = before
    for item in matches or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise fail(f"--match {item!r}: use source.<field>=value or payload.<path>=value")
        params[key] = value
    return params


def _line(event: dict[str, Any]) -> str:
    payload = json.dumps(event.get("payload"), separators=(",", ":"), default=str)
    if len(payload) > 120:
        payload = payload[:117] + "..."
    return f"{event['seq']:>8} {event['created_at']} {event['type']:<32} {payload}"


@events_app.command("search")
def events_search(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    types: TypesOpt = None,
    text: TextOpt = None,
    correlation_id: CorrelationOpt = None,
    match: MatchOpt = None,
    after: Annotated[str | None, typer.Option("--after", help="afterDate (ISO 8601)")] = None,
    before: Annotated[str | None, typer.Option("--before", help="beforeDate (ISO 8601)")] = None,
    limit: Annotated[int, typer.Option(help="Events per page")] = 50,
    cursor: Annotated[int | None, typer.Option(help="next_cursor of the previous page")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Search a workspace's events, newest first."""
    params = _params(types, text, correlation_id, match, after, before)
    params["limit"] = limit
    if cursor:
        params["cursor"] = cursor
    result = call(
        Client(server, token), "GET", f"/api/v1/workspaces/{workspace}/events", params=params
    )
    if as_json:
        print_json(result)
        return
    table = make_table("seq", "created", "type", "correlation", "payload", keep=("seq",))
    for event in result["items"]:
        payload = json.dumps(event.get("payload"), default=str)
        table.add_row(
            str(event["seq"]),
            event["created_at"],
            event["type"],
            str(event["source"].get("correlationId") or ""),
            payload if len(payload) <= 80 else payload[:77] + "...",
        )
    console.print(table)
    if result.get("next_cursor"):
        console.print(f"more: --cursor {result['next_cursor']}")


@events_app.command("tail")
def events_tail(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    types: TypesOpt = None,
    text: TextOpt = None,
    correlation_id: CorrelationOpt = None,
    match: MatchOpt = None,
    since: Annotated[
        int | None, typer.Option("--since", help="Start after this seq (default: now)")
    ] = None,
    count: Annotated[int | None, typer.Option("--count", help="Stop after this many")] = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Follow a workspace's events live (Server-Sent Events); reconnects where it left off."""
    import httpx

    params = _params(types, text, correlation_id, match)
    client = Client(server, token)
    last_id = since
    seen = 0
    while True:
        headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
        try:
            with client.http.stream(
                "GET",
                f"/api/v1/workspaces/{workspace}/events/stream",
                params=params,
                headers=headers,
                timeout=httpx.Timeout(10, read=None),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    try:
                        message = response.json()["error"]["message"]
                    except (ValueError, KeyError, TypeError):
                        message = response.text
                    raise fail(message)
                for line in response.iter_lines():
                    if line.startswith("id: "):
                        last_id = int(line[4:])
                    elif line.startswith("data: "):
                        event = json.loads(line[6:])
                        if as_json:
                            sys.stdout.write(json.dumps(event, default=str) + "\n")
                            sys.stdout.flush()
                        else:
                            console.print(_line(event), highlight=False, markup=False)
                        seen += 1
                        if count is not None and seen >= count:
                            return
        except httpx.TransportError as exc:
            console.print(f"[yellow]stream interrupted ({exc}); reconnecting[/yellow]")
        except KeyboardInterrupt:
            return


@events_app.command("emit")
def events_emit(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    event_type: Annotated[str, typer.Argument(help="Event type")],
    payload: Annotated[
        str | None, typer.Option("--payload", help="JSON payload ('-' reads stdin)")
    ] = None,
    correlation_id: CorrelationOpt = None,
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Emit a custom event (it starts the automations listening to its type)."""
    value: Any = None
    if payload is not None:
        raw = sys.stdin.read() if payload == "-" else payload
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise fail(f"--payload is not valid JSON: {exc}") from None
    body: dict[str, Any] = {"type": event_type, "payload": value}
    if correlation_id:
        body["correlationId"] = correlation_id
    result = call(
        Client(server, token), "POST", f"/api/v1/workspaces/{workspace}/events", json=body
    )
    if as_json:
        print_json(result)
    else:
        console.print(f"emitted {result['type']} (seq {result['seq']}, id {result['id']})")


@events_app.command("cleanup")
def events_cleanup(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would go")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Apply the retention policy to the store from FLOWLINK_DATABASE_URL (works on the store)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from flowlink.assembly import open_store
    from flowlink.events.retention import RetentionPolicy, cleanup
    from flowlink.settings import ServerSettings

    settings = ServerSettings.from_env()
    store = open_store(settings)
    try:
        policy = RetentionPolicy.from_settings(settings)
        if dry_run or as_json:
            report = cleanup(store, policy, dry_run=dry_run)
        else:
            with Progress(
                TextColumn("deleting events"), BarColumn(), MofNCompleteColumn(), console=console
            ) as progress:
                task = progress.add_task("cleanup", total=None)

                def advance(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                report = cleanup(store, policy, progress=advance)
    finally:
        store.dispose()
    if as_json:
        print_json(report.view())
        return
    verb = "would delete" if dry_run else "deleted"
    console.print(f"{verb} {report.total} events")
    for reason, number in report.counts().items():
        if number:
            console.print(f"  {reason}: {number}")
    for item in report.items:
        name = item.workspace_slug or item.workspace_id or "(no workspace)"
        console.print(f"    {name}: {item.count} ({item.reason})")


@events_app.command("webhook-key")
def events_webhook_key(
    workspace: Annotated[str, typer.Argument(help="Workspace slug")],
    automation: Annotated[str, typer.Argument(help="Automation with when.endpoint: true")],
    server: ServerOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or replace an automation's webhook key and show it (only now)."""
    try:
        result = Client(server, token).post(
            f"/api/v1/workspaces/{workspace}/automations/{automation}/webhook_key"
        )
    except ApiError as exc:
        raise fail(exc.message) from None
    if as_json:
        print_json(result)
        return
    console.print(f"webhook: {result['url']}")
    console.print(f"key:     {result['key']}  (send as X-Flowlink-Key; shown only once)")
