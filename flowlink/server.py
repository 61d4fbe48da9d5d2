"""Composing a server process: store, API, worker, demo workspace."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.access.service import (
    admin_exists,
    authenticate_token,
    check_login,
    init_admin,
    reset_admin_login,
)
from flowlink.api.app import create_app
from flowlink.api.deps import ServerContext
from flowlink.api.proxies import ForwardedHeaders
from flowlink.credentials import load_credentials, save_credentials
from flowlink.errors import Unauthorized
from flowlink.events.rejections import flush_rejections
from flowlink.executions.worker import Worker
from flowlink.linking.connector import LinkManager
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import User
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.folder import read_folder

log = logging.getLogger(__name__)
DEMO_SLUG = "demo"


def open_store(settings: ServerSettings) -> Store:
    """Connect to the store and bring its schema up to date."""
    store = Store(settings.database_url)
    store.migrate()
    return store


def demo_folder() -> Path:
    """The bundled demo workspace folder."""
    return Path(str(resources.files("flowlink") / "demo" / "workspace"))


def prepare_demo(store: Store, server_url: str) -> dict[str, Any]:
    """Apply the demo workspace and make sure an admin login exists; returns the login."""
    bundle = workspaces.parse_files(read_folder(demo_folder()))
    with store.write() as session:
        workspaces.apply_bundle(session, bundle, os.environ)
        if not admin_exists(session):
            credentials = init_admin(session)
            save_credentials(server_url, credentials)
        else:
            ensure_demo_login(session, server_url)
    saved = load_credentials()
    return saved if saved.get("token") else {}


def ensure_demo_login(session: Session, server_url: str) -> None:
    """Make the saved admin login work on this store (a fresh password and token if stale)."""
    saved = load_credentials()
    user, password, token = saved.get("user"), saved.get("password"), saved.get("token")
    strings = all(isinstance(v, str) for v in (user, password, token))
    if strings and check_login(session, str(user), str(password)):
        try:
            if authenticate_token(session, str(token)).is_admin:
                return
        except Unauthorized:
            pass
    admin = session.scalar(
        select(User)
        .where(User.is_admin.is_(True), User.disabled.is_(False))
        .order_by(User.created_at)
    )
    if admin is not None:
        save_credentials(server_url, reset_admin_login(session, admin.username))


class _Server(uvicorn.Server):
    """uvicorn, telling long-running requests (link long polls) when it shuts down."""

    def __init__(self, config: uvicorn.Config, context: ServerContext) -> None:
        super().__init__(config)
        self.context = context

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.context.stopping.set()
        self.context.store.notifier.fire(notify.LINK, "")
        super().handle_exit(sig, frame)


@dataclass
class RunningServer:
    """A server that is up: its context, its worker (if any) and its uvicorn instance."""

    context: ServerContext
    worker: Worker | None
    server: uvicorn.Server


def build_server(
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    with_worker: bool = True,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "warning",
) -> RunningServer:
    """Open the store and build the API app and (optionally) its in-process worker."""
    resolve_secret_key(settings)
    store = open_store(settings)
    with store.write() as session:
        workspaces.rerender_all(session, os.environ)
    context = ServerContext(store=store, settings=settings)
    app = create_app(context)
    app.add_middleware(ForwardedHeaders, trusted=settings.trusted_proxies)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (and FORWARDED_ALLOW_IPS):
        # only the configured trusted proxies count (ForwardedHeaders).
        proxy_headers=False,
        lifespan="off",
        timeout_graceful_shutdown=10,
    )
    worker = Worker(store, settings) if with_worker else None
    app.state.sandbox_info = worker.pool.sandbox_info if worker is not None else None
    return RunningServer(context=context, worker=worker, server=_Server(config, context))


def serve(running: RunningServer) -> None:
    """Run until interrupted, then stop the worker gracefully."""
    from flowlink.events.scheduler import start_event_loops

    stop_event_loops = start_event_loops(
        running.context.store, running.context.settings, server=running.server
    )
    if running.worker is not None:
        running.worker.start()
    links = LinkManager(running.context.store, running.context.settings)
    links.start()
    try:
        running.server.run()
    finally:
        links.stop()
        flush_rejections(running.context.store)
        stop_event_loops()
        if running.worker is not None:
            running.worker.stop()
        running.context.store.dispose()
