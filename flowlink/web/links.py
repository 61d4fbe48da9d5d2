"""The links page: every sync config with its state; create and edit forms for admins.

Key fields are write-only: a submitted key is never rendered back, not even on a failed
submit. "Generate a key pair" makes a pair on the server, shows its public key once and
carries the private key to the create form only encrypted with the server's secret key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from flowlink.access.policy import allows, authorize
from flowlink.access.service import Principal
from flowlink.errors import FlowlinkError, Invalid
from flowlink.linking import keys
from flowlink.linking import service as linking
from flowlink.settings import resolve_secret_key
from flowlink.web.render import render
from flowlink.web.routes import Post, Posted, Viewer, see_other, workspace_for
from flowlink.web.session import WebRoute, context_of
from flowlink.web.workspace import link_rows

router = APIRouter(
    route_class=WebRoute, include_in_schema=False, default_response_class=HTMLResponse
)
TEXT_FIELDS = ("name", "remote_url", "ca_certificate", "sync_interval", "direction", "role")
FLAGS = ("enabled", "verify_ssl", "send_all_executions")
KEY_FIELDS = ("own_private_key", "remote_public_key")
SEALED = "generated_key"


def _blank() -> dict[str, Any]:
    return {
        **dict.fromkeys(TEXT_FIELDS, ""),
        "enabled": True,
        "verify_ssl": True,
        "send_all_executions": False,
    }


def _form_values(sent: Posted) -> dict[str, Any]:
    """What the form carried, for showing it again (never the key fields)."""
    values: dict[str, Any] = {f: sent.text(f) for f in TEXT_FIELDS}
    values.update({f: sent.text(f) == "on" for f in FLAGS})
    return values


def _fields(sent: Posted, secret: str, *, creating: bool) -> dict[str, Any]:
    """The sync config fields of a form, checked by the domain like the API's JSON body."""
    data: dict[str, Any] = {f: sent.text(f) == "on" for f in FLAGS}
    data["remote_url"] = sent.text("remote_url").strip() or None
    data["ca_certificate"] = sent.text("ca_certificate").strip() or None
    data["direction"] = sent.text("direction") or None
    data["role"] = sent.text("role").strip() or None
    raw_interval = sent.text("sync_interval").strip()
    try:
        data["sync_interval"] = float(raw_interval) if raw_interval else None
    except ValueError:
        raise Invalid(
            "sync_interval: a number of seconds, or empty for immediate mode",
            details={"field": "sync_interval"},
        ) from None
    for field in KEY_FIELDS:
        if sent.text(field).strip():
            data[field] = sent.text(field)
    sealed = sent.text(SEALED)
    if sealed and "own_private_key" not in data:
        try:
            data["own_private_key"] = keys.decrypt_at_rest(secret, sealed)
        except Exception:
            raise Invalid(
                "the generated key pair is no longer valid: generate a new one",
                details={"field": "own_private_key"},
            ) from None
    if creating:
        data["name"] = sent.text("name").strip()
    return data


def _carried_pair(sealed: str, secret: str) -> dict[str, str] | None:
    """A generated key pair kept across a failed submit (its public key is not shown again)."""
    if not sealed:
        return None
    try:
        private = keys.load_private_key(keys.decrypt_at_rest(secret, sealed))
    except Exception:
        return None
    return {"public": "", "fingerprint": keys.fingerprint(private), "sealed": sealed}


def _page(
    request: Request,
    user: Principal,
    ws: str,
    *,
    form: dict[str, Any] | None = None,
    editing: str = "",
    error: str = "",
    generated: dict[str, str] | None = None,
    notice: str = "",
    status: int = 200,
) -> Response:
    with context_of(request).store.read() as session:
        workspace = workspace_for(session, user, ws, "sync_configs")
        rows = link_rows(session, workspace)
        can_manage = allows(user, "manage", "sync_configs", workspace)
    if editing and form is None:
        current = next((r for r in rows if r["name"] == editing), None)
        if current is not None:
            form = {
                **{f: current[f] if current[f] is not None else "" for f in TEXT_FIELDS},
                **{f: current[f] for f in FLAGS},
            }
    return render(
        request,
        "links.html",
        {
            "ws": ws,
            "nav": "links",
            "rows": rows,
            "can_manage": can_manage,
            "form": form or _blank(),
            "editing": editing,
            "error": error,
            "generated": generated,
            "notice": notice,
            "base": str(request.base_url).rstrip("/"),
        },
        status=status,
    )


@router.get("/w/{ws}/links")
def links_page(
    request: Request, ws: str, user: Viewer, edit: str = "", saved: str = ""
) -> Response:
    """Sync configs with state and fingerprints; the create (or ``edit``) form for admins."""
    notice = f"Saved {saved}." if saved else ""
    return _page(request, user, ws, editing=edit, notice=notice)


@router.post("/w/{ws}/links/keypair")
async def generate_key_pair(request: Request, ws: str, sent: Post) -> Response:
    """Generate a key pair for the form: the public key is shown once, the private key
    travels sealed (encrypted with the server's secret key) until the form is submitted."""
    context = context_of(request)

    def make() -> Response:
        with context.store.read() as session:
            authorize(sent.user, "manage", "sync_configs", workspace_for(session, sent.user, ws))
        pair = keys.generate_key_pair()
        sealed = keys.encrypt_at_rest(resolve_secret_key(context.settings), pair.private_pem)
        generated = {"public": pair.public_pem, "fingerprint": pair.fingerprint, "sealed": sealed}
        return _page(
            request,
            sent.user,
            ws,
            form=_form_values(sent),
            editing=sent.text("editing"),
            generated=generated,
        )

    return await run_in_threadpool(make)


@router.post("/w/{ws}/links")
async def save_link(request: Request, ws: str, sent: Post) -> Response:
    """Create a sync config, or change one (``editing``); keys are replaced only when given."""
    context = context_of(request)
    editing = sent.text("editing")

    def save() -> str:
        secret = resolve_secret_key(context.settings)
        with context.store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "sync_configs")
            authorize(sent.user, "manage", "sync_configs", workspace)
            data = _fields(sent, secret, creating=not editing)
            if editing:
                return linking.update_sync_config(session, workspace, editing, data, secret).name
            return linking.create_sync_config(session, workspace, data, secret).name

    try:
        name = await run_in_threadpool(save)
    except FlowlinkError as error:
        if error.status not in (409, 422):
            raise
        message, status = error.message, error.status
        carried = _carried_pair(sent.text(SEALED), resolve_secret_key(context.settings))
        return await run_in_threadpool(
            lambda: _page(
                request,
                sent.user,
                ws,
                form=_form_values(sent),
                editing=editing,
                error=message,
                generated=carried,
                status=status,
            )
        )
    return see_other(f"/w/{ws}/links?saved={name}#link-{name}")


@router.post("/w/{ws}/links/{name}/enabled")
async def set_enabled(request: Request, ws: str, name: str, sent: Post) -> Response:
    """Enable or disable a link."""
    context = context_of(request)

    def toggle() -> None:
        secret = resolve_secret_key(context.settings)
        with context.store.write() as session:
            workspace = workspace_for(session, sent.user, ws, "sync_configs")
            authorize(sent.user, "manage", "sync_configs", workspace)
            linking.update_sync_config(
                session, workspace, name, {"enabled": sent.text("enabled") == "on"}, secret
            )

    await run_in_threadpool(toggle)
    return see_other(f"/w/{ws}/links?saved={name}#link-{name}")
