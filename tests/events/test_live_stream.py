"""The live stream's delivery: in turns of the event loop, and how a stream ends."""

from __future__ import annotations

import asyncio
import contextlib

from flowlink.events import live
from flowlink.events.service import EventFilter
from flowlink.store import notify
from flowlink.store.engine import Store


def test_turns_let_a_few_through_per_turn_of_the_loop_first_come_first_served() -> None:
    async def main() -> list[tuple[int, int]]:
        turns = live._Turns(per_turn=2)
        ticks = [0]
        passed: list[tuple[int, int]] = []  # (taker, turn of the loop it passed in)

        async def ticker() -> None:
            while True:
                ticks[0] += 1
                await asyncio.sleep(0)

        async def taker(n: int) -> None:
            await turns.take()
            passed.append((n, ticks[0]))

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        await asyncio.gather(*(taker(n) for n in range(7)))
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
    async def main() -> list[int]:
        turns = live._Turns(per_turn=1)
        passed: list[int] = []

        async def taker(n: int) -> None:
            await turns.take()
            passed.append(n)

        tasks = [asyncio.create_task(taker(n)) for n in range(3)]
        await asyncio.sleep(0)  # 0 passed; 1 and 2 wait
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return passed

    assert asyncio.run(main()) == [0, 2]


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
