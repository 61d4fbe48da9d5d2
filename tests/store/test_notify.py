"""Notifications across processes: each is heard once where it was made, and elsewhere."""

from __future__ import annotations

import asyncio
import threading

import pytest

from flowlink.store import notify
from flowlink.store.engine import Store
from tests.conftest import fire_timers_early


def test_a_process_hears_its_own_notifications_once_and_others_too(store: Store) -> None:
    """A commit fires its announcements in-process; on PostgreSQL its NOTIFY also comes back
    through the process's own LISTEN. That echo must not fire them a second time (every waiter
    woke twice, for a second look that found nothing), while another process's are heard."""
    if store.dialect != "postgresql":
        pytest.skip("NOTIFY is PostgreSQL's; SQLite fires in-process only")
    other = Store(store.url)  # another process's store on the same database
    heard: list[str] = []
    store.notifier.subscribe(notify.LINK, heard.append)
    ready = threading.Event()

    def announce(on: Store, payload: str) -> None:
        with on.write() as session:
            notify.announce(session, notify.LINK, payload)

    async def run() -> None:
        listener = asyncio.create_task(
            notify.listen_postgres(_conninfo(store), store.notifier, ready)
        )
        while not ready.is_set():
            await asyncio.sleep(0.01)
        heard.clear()  # the fire of every channel on connecting
        announce(store, "mine")
        announce(other, "theirs")  # committed after "mine": heard after its echo would be
        async with asyncio.timeout(10):
            while "theirs" not in heard:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        listener.cancel()

    try:
        asyncio.run(run())
    finally:
        other.dispose()
    assert heard == ["mine", "theirs"]
    assert store.notifier.own_backends  # the pooled connections that wrote


def _conninfo(store: Store) -> str:
    return store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def test_a_wait_on_a_given_waiter_that_checked_already_waits_first() -> None:
    """``checked``: no look before a wake-up; a wake-up of interest looks, others do not."""
    notifier = notify.Notifier()
    looks: list[int] = []

    def check() -> bool:
        looks.append(1)
        return len(looks) == 2

    async def run() -> tuple[bool, int]:
        with notifier.waiter({notify.ENDED: None}) as waiter:
            waiting = asyncio.create_task(
                notify.wait_until(
                    notifier, {notify.ENDED: {"mine"}}, check, 30.0, waiter=waiter, checked=True
                )
            )
            await asyncio.sleep(0.05)
            assert looks == []
            notifier.fire(notify.ENDED, "other")  # narrowed to "mine": no look
            await asyncio.sleep(0.05)
            assert looks == []
            notifier.fire(notify.ENDED, "mine")
            await asyncio.sleep(0.05)
            assert looks == [1]  # looked once, not done yet
            notifier.fire(notify.ENDED, "mine")
            return await asyncio.wait_for(waiting, 10), len(looks)

    assert asyncio.run(run()) == (True, 2)
    assert notifier.waiting() == 0  # the caller's waiter left with its block


@pytest.mark.parametrize("early", [0.0, 0.005])
def test_a_wait_that_checked_already_looks_once_at_the_timeout(
    early: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A wait to the deadline that nothing woke is the timeout, even if its timer fired early.
    fire_timers_early(monkeypatch, early)
    notifier = notify.Notifier()
    looks: list[int] = []

    async def run() -> bool:
        with notifier.waiter({}) as waiter:
            return await notify.wait_until(
                notifier,
                {notify.ENDED: {"x"}},
                lambda: bool(looks.append(1)),
                0.05,
                waiter=waiter,
                checked=True,
            )

    assert asyncio.run(run()) is False
    assert looks == [1]
