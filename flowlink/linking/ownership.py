"""Which server process drives which link, when several share one PostgreSQL store.

Every server runs a link manager, but each connecting sync config must be driven by
exactly one process: two would double the traffic (and the long polls) of the link.
On PostgreSQL a process owns a link while it holds a session-level advisory lock on it,
``pg_try_advisory_lock(LOCK_SPACE, hashtext(config id))``, on one connection of its own.
The locks go with that connection: when the process dies (even ``kill -9``) the database
drops them at once, and another process takes the links over at its next refresh (every
``FLOWLINK_LINK_REFRESH`` seconds). A process that loses its connection stops its
connectors before it takes any link again. The answering side needs no owner: any
server answers any exchange. SQLite is one process, which owns every link.
"""

from __future__ import annotations

import logging
from typing import Any

from flowlink.store.engine import Store

log = logging.getLogger(__name__)
LOCK_SPACE = 0x6C6E6B  # the first key of every link's advisory lock ("lnk")


class LinkOwnership:
    """The links this process drives: claims and releases them, one lock each."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.held: set[str] = set()
        self._conn: Any = None  # psycopg.AsyncConnection, made on first use

    async def claim(self, wanted: set[str]) -> set[str]:
        """Take the wanted links that no other process holds, give up the others.

        Returns the links this process owns now (all of them on SQLite).
        """
        if self.store.dialect != "postgresql":
            self.held = set(wanted)
            return set(self.held)
        import psycopg

        try:
            conn = await self._connection()
            gone = sorted(self.held - wanted)
            if gone:
                await conn.execute(
                    "SELECT pg_advisory_unlock(%s, hashtext(id)) FROM unnest(%s::text[]) id",
                    (LOCK_SPACE, gone),
                )
                self.held -= set(gone)
            todo = sorted(wanted - self.held)
            if todo:
                cursor = await conn.execute(
                    "SELECT id FROM unnest(%s::text[]) id"
                    " WHERE pg_try_advisory_lock(%s, hashtext(id))",
                    (todo, LOCK_SPACE),
                )
                self.held |= {row[0] for row in await cursor.fetchall()}
            else:
                await conn.execute("SELECT 1")  # the locks live as long as this connection
        except psycopg.Error as error:
            log.warning(
                "lost the link ownership connection (%s); links stop until it is back", error
            )
            await self.close()
        return set(self.held)

    async def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self.held = set()  # a new connection holds nothing
            url = self.store.engine.url.set(drivername="postgresql")
            self._conn = await psycopg.AsyncConnection.connect(
                url.render_as_string(hide_password=False), autocommit=True
            )
        return self._conn

    async def close(self) -> None:
        """Give up every link (closing the connection drops its locks)."""
        self.held = set()
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                await conn.close()
            except Exception:  # already broken: its locks are gone with it
                log.debug("closing the link ownership connection failed", exc_info=True)
