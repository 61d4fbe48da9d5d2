"""The live stream's delivery: in turns of the event loop, and how a stream ends."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

from flowlink.events import live
from flowlink.events.service import EventFilter
from flowlink.store import notify
from flowlink.store.engine import Store


def test_turns_hand_a_few_results_per_turn_of_the_loop_first_come_first_served() -> None:
    async def main() -> list[tuple[int, int]]:
        turns = live._Turns(per_turn=2)
        ticks = [0]
        passed: list[tuple[int, int]] = []  # (waiter, turn of the loop it got its result in)

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        async def waiter(future: asyncio.Future[str]) -> None:
            n = int(await future)
            passed.append((n, ticks[0]))

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(7)]
        waiting = [asyncio.create_task(waiter(f)) for f in futures]
        for n, future in enumerate(futures):
            turns.hand([future], str(n))
        await asyncio.gather(*waiting)
        ticking.cancel()
        return passed

    passed = asyncio.run(main())
    assert [n for n, _ in passed] == list(range(7))
    per_turn: dict[int, int] = {}
    for _, tick in passed:
        per_turn[tick] = per_turn.get(tick, 0) + 1
    assert max(per_turn.values()) == 2
    assert len(per_turn) == 4  # 2 + 2 + 2 + 1


def test_a_cancelled_waiter_takes_no_room_in_a_turn() -> None:
    async def main() -> list[list[bool]]:
        turns = live._Turns(per_turn=1)
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(3)]
        turns.hand(futures, "rows")
        futures[1].cancel()
        handed = []
        for _ in range(2):
            await asyncio.sleep(0)
            handed.append([f.done() and not f.cancelled() for f in futures])
        return handed

    # 0 in the first turn; 1 was cancelled, so 2 in the second
    assert asyncio.run(main()) == [[True, False, False], [True, False, True]]


def test_streams_in_one_place_share_one_read_and_a_cancelled_one_stops_no_other() -> None:
    class Counting:
        def __init__(self) -> None:
            self.notifier = notify.Notifier()

    async def main() -> tuple[int, list[Any]]:
        store = Counting()
        reads = [0]
        release = threading.Event()

        def read() -> list[live._Item]:
            reads[0] += 1
            release.wait(5)
            return [live._Item(1, "t", "{}")]

        key = ("place",)
        tasks = [
            asyncio.create_task(live._shared_read(key, store, read))  # type: ignore[arg-type]
            for _ in range(5)
        ]
        await asyncio.sleep(0.05)
        tasks[2].cancel()
        release.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return reads[0], results

    reads, results = asyncio.run(main())
    assert reads == 1
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != 2] == [[live._Item(1, "t", "{}")]] * 4
    assert live._reads == {}


def test_a_stream_ends_when_the_server_stops_and_asks_gone_only_for_keep_alives(
    store: Store,
) -> None:
    async def main() -> list[str]:
        stopping = [False]
        asked = [0]

        async def gone() -> bool:
            asked[0] += 1
            return False

        chunks: list[str] = []
        stream = live.stream(
            store, "no-such-workspace", EventFilter(), 0, gone=gone, stopped=lambda: stopping[0]
        )
        chunks.append(await anext(stream))  # retry:
        following = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(0.2)
        store.notifier.fire(notify.EVENTS, "")  # a wake-up with nothing new
        await asyncio.sleep(0.2)
        assert not following.done()
        stopping[0] = True
        store.notifier.fire(notify.EVENTS, "")  # the server's stop wakes every waiter
        with contextlib.suppress(StopAsyncIteration):
            chunks.append(await asyncio.wait_for(following, 10))
        assert asked[0] == 0  # the client is asked about only when a keep-alive is due
        return chunks

    assert asyncio.run(main()) == ["retry: 1000\n\n"]
    assert store.notifier.waiting() == 0
