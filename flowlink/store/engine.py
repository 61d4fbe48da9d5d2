"""Connecting to the store: SQLite (embedded default) or PostgreSQL, and migrating it."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import CursorResult, Engine, Executable, create_engine, event, exc, text
from sqlalchemy.orm import Session as Session  # re-exported: the api layer types with it
from sqlalchemy.orm import sessionmaker
from sqlalchemy.util.typing import TupleAny

from flowlink.background import BackgroundTasks
from flowlink.jsonsafe import loads_stored
from flowlink.settings import sqlite_path
from flowlink.store import notify

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_ID = 0x666C6F77  # PostgreSQL advisory lock key for schema upgrades


def run_core(
    session: Session, statement: Executable, params: dict[str, Any]
) -> CursorResult[*TupleAny]:
    """Run a statement built once (Core, or columns of mapped classes) on the session's
    connection: no ORM execution around it and no ORM objects out of it, for the statements
    every exchange runs. Pending changes are flushed first, as the session itself would."""
    session.flush()
    return session.connection().execute(statement, params)


def normalize_url(url: str) -> str:
    """Map the user-facing ``postgresql://`` URL onto the psycopg 3 driver."""
    for prefix in ("postgresql://", "postgres://", "postgresql+psycopg2://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" hook below choose the transaction mode.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Writers take the write lock up front (BEGIN IMMEDIATE): a deferred transaction that
        # later upgrades to a writer fails at once with SQLITE_BUSY instead of waiting.
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        connection.exec_driver_sql(f"BEGIN {mode}")


def track_backends(engine: Engine, pids: set[int]) -> None:
    """Keep ``pids`` the PostgreSQL backend pids of the engine's open connections.

    The listener skips the notifications they send (``notify.listen_postgres``): this process
    fires its own at the commit. A pid leaves the set when its connection closes, so a pid
    PostgreSQL later gives to another process's connection is heard again.
    """
    open_pids: dict[int, int] = {}  # id of the DBAPI connection -> its backend pid

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        pid = int(dbapi_connection.info.backend_pid)
        open_pids[id(dbapi_connection)] = pid
        pids.add(pid)

    def _forget(dbapi_connection: Any, *_: Any) -> None:
        pid = open_pids.pop(id(dbapi_connection), None)
        if pid is not None:
            pids.discard(pid)

    for name in ("close", "close_detached", "invalidate"):
        event.listen(engine, name, _forget)


def make_engine(database_url: str) -> Engine:
    """Create an engine for a store URL with the right per-backend settings."""
    url = normalize_url(database_url)
    if url.startswith("sqlite"):
        db_file = sqlite_path(url)
        if db_file is not None:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            # A row stored before input was checked must not make a read fail (PostgreSQL's
            # jsonb cannot hold lone surrogates or NaN in the first place).
            json_deserializer=loads_stored,
            pool_size=20,
            max_overflow=40,
        )
        _install_sqlite_hooks(engine)
        return engine
    # As many kept connections as the threads that use the store at once (the API's pool of
    # ~40): a burst above a smaller pool opened and closed a connection (a server process
    # forked by PostgreSQL) per transaction, 30 a second with 1,000 links renewing.
    engine = create_engine(url, pool_size=40, max_overflow=0)
    ping_when_idle(engine, PING_AFTER_IDLE_SECONDS)
    return engine


# A pooled PostgreSQL connection is checked with a ping only when it was idle this long: one
# that was in use a moment ago answered then. A ping on every checkout (``pool_pre_ping``) was
# a round trip per transaction, 16 % of the API threads' time with a thousand links busy.
PING_AFTER_IDLE_SECONDS = 5.0
_RETURNED_AT = "flowlink_returned_at"


def ping_when_idle(engine: Engine, idle_seconds: float) -> None:
    """Ping a pooled connection at checkout if it sat in the pool ``idle_seconds`` or more.

    A connection that fails the ping is replaced before use (the pool retries with another).
    A busy pool's connections are checked out within moments of their last use, so they are
    not pinged; when the database restarts meanwhile, the first statement on such a
    connection fails, and SQLAlchemy then replaces every connection of the pool made before
    that failure, as at any disconnect.
    """

    @event.listens_for(engine, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get(_RETURNED_AT)
        if returned is None or time.monotonic() - returned < idle_seconds:
            return  # new (it was just opened), or used a moment ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as error:
            # The pool discards this connection and checks out another (or opens one).
            raise exc.DisconnectionError(f"ping failed: {error}") from error


def alembic_config(connection: Any | None = None) -> Config:
    """An Alembic configuration pointing at the bundled migrations."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest version; safe when several processes start at once."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_ID})
        command.upgrade(alembic_config(connection), "heads")
    protect_sqlite_files(engine)


def protect_sqlite_files(engine: Engine) -> None:
    """Make the SQLite file and its WAL readable by the server's user only."""
    db_file = sqlite_path(str(engine.url))
    if db_file is None:
        return
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(db_file) + suffix)
        if path.exists():
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)


def protected_paths(engine: Engine, extra: list[str] | None = None) -> list[str]:
    """Files that flow scripts must never be able to read (the store and its companions)."""
    paths = list(extra or [])
    db_file = sqlite_path(str(engine.url))
    if db_file is not None:
        paths += [str(db_file) + suffix for suffix in ("", "-wal", "-shm", "-journal")]
    return paths


def read_options(dialect: str) -> dict[str, str]:
    """Execution options of ``Store.read()`` transactions, per backend.

    SQLite: a deferred transaction (a reader never takes the write lock). PostgreSQL: no
    transaction block at all (autocommit): at its default isolation (read committed) every
    statement sees its own snapshot anyway, so ``BEGIN`` and ``COMMIT`` were two round trips
    per read that bought nothing.
    """
    if dialect == "postgresql":
        return {"isolation_level": "AUTOCOMMIT"}
    return {"sqlite_begin": "DEFERRED"}


StoreSession = Session
"""What ``Store.write()`` and ``Store.read()`` yield, named for the layers that only pass it on
to domain functions (``api``, ``web`` and ``cli`` never import SQLAlchemy)."""


class Store:
    """The engine plus a session factory; one per process."""

    def __init__(
        self, database_url: str, *, session_hooks: Sequence[Callable[[type[Session]], None]] = ()
    ) -> None:
        """Open the store; each of ``session_hooks`` installs its listeners on the sessions.

        The hooks come from the domains built on the store (automations dispatches native
        events before a commit); they are installed before the notifier's, so what they
        write at commit is announced too.
        """
        self.url = database_url
        self.engine = make_engine(database_url)
        # A Session subclass of our own, so commit hooks fire for this store only.
        session_class: type[Session] = type("StoreSession", (Session,), {})
        self._sessions: sessionmaker[Session] = sessionmaker(
            self.engine, class_=session_class, expire_on_commit=False
        )
        self._read_sessions: sessionmaker[Session] = sessionmaker(
            self.engine.execution_options(**read_options(self.engine.dialect.name)),
            class_=session_class,
            expire_on_commit=False,
        )
        self.session_class = session_class
        self.notifier = notify.Notifier()
        for install in session_hooks:
            install(session_class)
        notify.install(session_class, self.notifier)
        if self.dialect == "postgresql":
            track_backends(self.engine, self.notifier.own_backends)
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        self.listening = threading.Event()  # set while the PostgreSQL listener listens
        self._version_connection: sqlite3.Connection | None = None

    def listen(self, tasks: BackgroundTasks) -> None:
        """Hear other processes' notifications (PostgreSQL only; SQLite is single-process).

        The listener is a task of the process's ``BackgroundTasks``: one connection on the
        event loop, started again when it is lost. ``listening`` is set while it listens.
        """
        if self.dialect != "postgresql":
            return
        conninfo = self.engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False
        )

        async def listen() -> None:
            await notify.listen_postgres(conninfo, self.notifier, self.listening)

        tasks.keep_running("PostgreSQL listener", listen)

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.engine.dialect.name

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on any error."""
        if self._write_lock is None:
            with self._sessions.begin() as session:
                yield session
            return
        # SQLite has one writer at a time. Queue this process's writers on a lock instead of
        # SQLite's busy handler, which sleeps in steps of up to 100 ms while it waits.
        with self._write_lock, self._sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (never takes SQLite's write lock; on PostgreSQL each
        statement runs on its own, see ``read_options``): never write in it."""
        with self._read_sessions.begin() as session:
            yield session

    def migrate(self) -> None:
        """Upgrade the schema to the newest version."""
        migrate(self.engine)

    def data_version(self) -> int | None:
        """SQLite: a number that changes whenever another connection (of this process or
        another) commits; ``None`` on PostgreSQL, whose changes are announced by NOTIFY."""
        db_file = sqlite_path(str(self.engine.url))
        if self.dialect != "sqlite" or db_file is None:
            return None
        if self._version_connection is None:
            self._version_connection = sqlite3.connect(str(db_file), check_same_thread=False)
        row = self._version_connection.execute("PRAGMA data_version").fetchone()
        return int(row[0])

    def dispose(self) -> None:
        """Close all pooled connections."""
        if self._version_connection is not None:
            self._version_connection.close()
            self._version_connection = None
        self.engine.dispose()
