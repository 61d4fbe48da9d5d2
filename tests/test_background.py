"""The background-task helper: intervals, first run, log-and-retry, one stop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from flowlink import background
from flowlink.background import BackgroundTasks


def test_jobs_run_on_their_interval_and_first_now_or_later() -> None:
    runs: dict[str, list[float]] = {"now": [], "later": [], "async": [], "off": []}
    threads: set[str] = set()

    def job(name: str) -> None:
        runs[name].append(time.monotonic())
        threads.add(threading.current_thread().name)

    async def coroutine_job() -> None:
        runs["async"].append(time.monotonic())

    async def main() -> float:
        tasks = BackgroundTasks()
        tasks.every("now", 0.1, lambda: job("now"), first="now")
        tasks.every("later", 0.3, lambda: job("later"), first="later")
        tasks.every("async", 0.1, coroutine_job)
        tasks.every("off", 0, lambda: job("off"))
        began = time.monotonic()
        await tasks.start()
        await asyncio.sleep(0.55)
        await tasks.stop()
        await asyncio.sleep(0.3)  # nothing runs after the stop
        assert tasks.stopping.is_set()
        return began

    began = asyncio.run(main())
    assert runs["now"][0] - began < 0.1  # at once
    assert 4 <= len(runs["now"]) <= 7
    assert len(runs["later"]) == 1 and runs["later"][0] - began >= 0.29  # after one interval
    assert len(runs["async"]) >= 4
    assert runs["off"] == []
    assert threading.main_thread().name not in threads  # plain jobs run in a thread hop
    last = max(max(r) for r in runs.values() if r)
    assert time.monotonic() - last >= 0.25


def test_a_failing_job_is_logged_and_runs_again(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("store is down")

    async def main() -> dict[str, int]:
        tasks = BackgroundTasks()
        tasks.every("flaky job", 0.05, flaky)
        await tasks.start()
        await asyncio.sleep(0.4)
        await tasks.stop()
        return tasks.runs

    with caplog.at_level(logging.ERROR, logger="flowlink.background"):
        completed = asyncio.run(main())
    assert len(calls) >= 4
    assert completed["flaky job"] == len(calls) - 2
    failures = [r for r in caplog.records if "flaky job failed" in r.getMessage()]
    assert len(failures) == 2 and "store is down" in (failures[0].exc_text or "")


def test_a_long_running_task_is_started_again_after_it_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(background, "RETRY_START", 0.05)
    starts: list[float] = []

    async def listener() -> None:
        starts.append(time.monotonic())
        if len(starts) < 3:
            raise ConnectionError("connection lost")
        await asyncio.sleep(3600)  # runs until the stop

    async def main() -> bool:
        tasks = BackgroundTasks()
        tasks.keep_running("listener", listener)
        await tasks.start()
        await asyncio.sleep(0.5)
        began = time.monotonic()
        await tasks.stop(timeout=1.0)
        return time.monotonic() - began < 1.5

    assert asyncio.run(main())
    assert len(starts) == 3  # failed twice, started again each time, then ran until the stop


def test_stop_waits_for_a_job_in_a_thread_and_the_signal_is_shared() -> None:
    stopping = threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        time.sleep(0.3)
        finished.append(stopping.is_set())

    async def main() -> None:
        tasks = BackgroundTasks(stopping)
        tasks.every("slow", 10, slow)
        await tasks.start()
        await asyncio.sleep(0.05)
        await tasks.stop()

    asyncio.run(main())
    assert stopping.is_set()
    assert finished == [True]  # the run in progress finished; the signal was visible to it


def test_start_in_thread_for_a_process_without_a_server() -> None:
    ticks: list[float] = []
    tasks = BackgroundTasks()
    tasks.every("tick", 0.05, lambda: ticks.append(time.monotonic()))
    tasks.start_in_thread()
    time.sleep(0.3)
    tasks.stop_thread()
    count = len(ticks)
    assert count >= 3
    time.sleep(0.15)
    assert len(ticks) == count


def test_stop_cancels_a_task_that_never_returns_at_once() -> None:
    """A listener blocked on its connection must not hold the shutdown for the timeout."""
    tasks = BackgroundTasks()
    cancelled = threading.Event()

    async def listener() -> None:
        try:
            await asyncio.Event().wait()  # nothing ever comes
        except asyncio.CancelledError:
            cancelled.set()
            raise

    tasks.keep_running("listener", listener)

    async def main() -> float:
        await tasks.start()
        await asyncio.sleep(0.05)
        began = time.monotonic()
        await tasks.stop(timeout=10.0)
        return time.monotonic() - began

    assert asyncio.run(main()) < 1.0
    assert cancelled.is_set()
