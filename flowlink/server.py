"""Composing a server process: store, API, worker, demo workspace."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from anyio import to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink import assembly
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
from flowlink.api.responses import DirectSends
from flowlink.automations.scheduler import schedule_event_jobs
from flowlink.background import BackgroundTasks
from flowlink.credentials import load_credentials, save_credentials
from flowlink.errors import Unauthorized
from flowlink.events.rejections import flush_rejections
from flowlink.executions.worker import Worker, watch_other_workers
from flowlink.linking.connector import LinkManager
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import User
from flowlink.web.app import install as install_console
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.folder import read_folder

log = logging.getLogger(__name__)

# Objects the cyclic garbage collector lets accumulate before it looks at the youngest
# generation (Python's default is 700); see ``settle_heap``.
YOUNG_COLLECTION_THRESHOLD = 10_000


def demo_folder() -> Path:
    """The bundled demo workspace folder."""
    return Path(str(resources.files("flowlink") / "demo" / "workspace"))


def prepare_demo(store: Store, server_url: str) -> dict[str, Any]:
    """Apply the demo workspace and make sure an admin login exists; returns the login."""
    bundle = workspaces.parse_files(read_folder(demo_folder()))
    with store.write() as session:
        assembly.apply_bundle(session, bundle, os.environ)
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


def settle_heap() -> None:
    """Take what a started server holds (modules, the app, the store's metadata: several
    hundred thousand objects) out of the cyclic garbage collector's work, and let it look
    at the youngest generation less often.

    A busy server allocates many short-lived objects (an event to a thousand open streams
    makes tens of thousands); every 700 of them the collector ran, and every few events it
    went through the whole heap, a pause of a third of a second for every stream and request.
    What remains after a full collection at start-up is frozen (``gc.freeze``): it lives as
    long as the process, and the collector no longer walks it. For the whole process, so
    only a process that is the server's own calls it (``build_server(settle_heap=True)``).
    """
    gc.collect()
    gc.freeze()
    _young, *older = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, *older)


class _Server(uvicorn.Server):
    """uvicorn, telling long-running requests (link long polls) when it shuts down, and
    settling the heap once it has started (``settle_heap``) if the process is its own."""

    def __init__(
        self, config: uvicorn.Config, context: ServerContext, *, settle: bool = False
    ) -> None:
        super().__init__(config)
        self.context = context
        self.settle = settle

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.settle and self.started:
            settle_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.context.stopping.set()
        for channel in (notify.LINK, notify.EVENTS, notify.LOGS):  # waiters see the stop
            self.context.store.notifier.fire(channel, "")
        super().handle_exit(sig, frame)


@dataclass
class RunningServer:
    """A server that is up: its context, its worker (if any), its uvicorn instance and the
    background tasks its lifespan runs."""

    context: ServerContext
    worker: Worker | None
    server: uvicorn.Server
    tasks: BackgroundTasks
    links: LinkManager


def lifespan(running: RunningServer) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """What the server runs beside its requests, started and stopped with it.

    One ``BackgroundTasks`` on the server's event loop holds the PostgreSQL listener, the
    scheduler, event retention, the worker's heartbeat and reaper, and the link manager.
    The shutdown signal is ``context.stopping``: long polls and streams end, connectors and
    the worker stop, then the tasks.
    """
    context = running.context

    @contextlib.asynccontextmanager
    async def run(_app: Any) -> AsyncIterator[None]:
        tasks, store = running.tasks, context.store
        store.listen(tasks)
        schedule_event_jobs(tasks, store, context.settings)
        if running.worker is not None:
            running.worker.start()
            running.worker.schedule(tasks)
        running.links.schedule(tasks)
        watch_other_workers(store, tasks, context.settings.poll_interval)
        await tasks.start()
        if store.dialect == "postgresql":  # other processes' notifications are heard
            await to_thread.run_sync(store.listening.wait, 5.0)
        try:
            yield
        finally:
            context.stopping.set()
            await running.links.stop()
            await to_thread.run_sync(flush_rejections, store)  # counts of open windows
            if running.worker is not None:
                await to_thread.run_sync(running.worker.stop)
            await tasks.stop()

    return run


def build_server(
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    with_worker: bool = True,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    log_level: str = "warning",
    settle_heap: bool = False,
) -> RunningServer:
    """Open the store and build the API app and (optionally) its in-process worker.

    ``settle_heap``: the process is the server's own (``flowlink server``); once started, it
    tunes the process's garbage collector (``settle_heap``)."""
    resolve_secret_key(settings)
    store = assembly.open_store(settings)
    with store.write() as session:
        workspaces.rerender_all(session, os.environ)
    context = ServerContext(store=store, settings=settings)
    app = create_app(context, [install_console])
    app.add_middleware(ForwardedHeaders, trusted=settings.trusted_proxies)
    config = uvicorn.Config(
        DirectSends(app),
        host=host,
        port=port,
        log_level=log_level,
        ssl_certfile=tls_cert,
        ssl_keyfile=tls_key,
        access_log=False,
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 (and FORWARDED_ALLOW_IPS):
        # only the configured trusted proxies count (ForwardedHeaders).
        proxy_headers=False,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    worker = Worker(store, settings, hooks=assembly.FLOW_HOOKS) if with_worker else None
    app.state.sandbox_info = worker.pool.sandbox_info if worker is not None else None
    running = RunningServer(
        context=context,
        worker=worker,
        server=_Server(config, context, settle=settle_heap),
        tasks=BackgroundTasks(context.stopping),
        links=LinkManager(store, settings),
    )
    app.router.lifespan_context = lifespan(running)
    return running


def serve(running: RunningServer) -> None:
    """Run until interrupted (the lifespan starts and stops the background work)."""
    try:
        running.server.run()
    finally:
        running.context.store.dispose()
