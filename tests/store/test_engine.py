"""The store's connections on PostgreSQL: reads outside a transaction block, writes inside
one, and a pooled connection pinged only after it sat idle."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy import create_engine, exc, text

from flowlink.store.engine import Store, normalize_url, ping_when_idle


def _postgres_only(store: Store) -> None:
    if store.dialect != "postgresql":
        pytest.skip("PostgreSQL's round trips; SQLite runs in the process")


def test_reads_run_statement_by_statement_and_writes_in_one_transaction(store: Store) -> None:
    """A read sends no BEGIN and no COMMIT: each statement is on its own (``now()`` moves
    between two of them); a write on the same pooled connection afterwards is still one
    transaction (``now()`` stays), and a write that fails leaves nothing behind."""
    _postgres_only(store)
    store.engine.dispose()  # one pooled connection: the write below reuses the read's
    with store.read() as session:
        pid = session.execute(text("SELECT pg_backend_pid()")).scalar()
        first = session.execute(text("SELECT now()")).scalar()
        session.execute(text("SELECT pg_sleep(0.02)"))
        second = session.execute(text("SELECT now()")).scalar()
    assert first != second
    with store.write() as session:
        assert session.execute(text("SELECT pg_backend_pid()")).scalar() == pid
        first = session.execute(text("SELECT now()")).scalar()
        session.execute(text("SELECT pg_sleep(0.02)"))
        assert session.execute(text("SELECT now()")).scalar() == first
    with pytest.raises(RuntimeError), store.write() as session:
        session.execute(text("CREATE TABLE written_then_failed (n int)"))
        raise RuntimeError("the write fails after its statement")
    with store.read() as session:
        assert session.execute(text("SELECT to_regclass('written_then_failed')")).scalar() is None


def test_a_connection_is_pinged_only_after_sitting_idle(store: Store) -> None:
    """Checked out again at once: no ping. Idle longer than the threshold: pinged, and one
    whose server process is gone is replaced before the caller uses it."""
    _postgres_only(store)
    engine = create_engine(normalize_url(store.url), pool_size=1, max_overflow=0)
    ping_when_idle(engine, 0.3)
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    try:
        for _ in range(3):
            with engine.connect() as connection:
                pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        assert pings == []
        with psycopg.connect(store.url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        time.sleep(0.4)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != pid
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_a_connection_lost_while_in_use_fails_once_then_the_pool_is_renewed(store: Store) -> None:
    """A connection used a moment ago is not pinged: if its server process went away
    meanwhile, that one use fails with a disconnect, and the pool replaces its connections
    made before the failure, so the next use works on a new one."""
    _postgres_only(store)
    engine = create_engine(normalize_url(store.url), pool_size=2, max_overflow=0)
    ping_when_idle(engine, 60.0)
    try:
        with engine.connect() as first, engine.connect() as second:
            pids = {
                connection.execute(text("SELECT pg_backend_pid()")).scalar()
                for connection in (first, second)
            }
        with psycopg.connect(store.url, autocommit=True) as admin:
            for pid in pids:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(exc.DBAPIError) as failed, engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert failed.value.connection_invalidated
        for _ in range(2):
            with engine.connect() as connection:
                assert connection.execute(text("SELECT pg_backend_pid()")).scalar() not in pids
    finally:
        engine.dispose()
