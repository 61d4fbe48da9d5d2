"""Background work of a process: periodic jobs and long-running tasks on one event loop.

A server's lifespan owns one ``BackgroundTasks``: the scheduler, event retention, the
worker's lease heartbeat and reaper, the link manager and connectors, and the PostgreSQL
listener all run on it, instead of each in a thread loop of its own. A ``flowlink worker``
process runs its own on a loop in one thread (``start_in_thread``).

- ``every(name, interval, job)``: run ``job`` every ``interval`` seconds, the first time at
  once (``first="now"``) or after one interval (``first="later"``). A plain function runs in
  a short thread hop (it does store work); a coroutine function runs on the loop. A job that
  fails is logged and runs again at its next time.
- ``keep_running(name, run)``: a coroutine that runs until the process stops (a listener, a
  connector); when it fails it is logged and started again after a back-off.
- ``stop()``: the one shutdown signal. ``stopping`` is set (threads may look at it), every
  task is woken and cancelled, and jobs in a thread hop are given time to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from anyio import CapacityLimiter, to_thread

log = logging.getLogger(__name__)
RETRY_START = 1.0  # seconds before a failed long-running task starts again (doubling)
RETRY_MAX = 30.0
# Periodic jobs take their thread hops from threads of their own, not from the pool the API
# shares: a heartbeat due while a burst of requests holds every pool thread still runs on time.
JOB_THREADS = 4

Job = Callable[[], Any]  # a plain function or a coroutine function


@dataclass(frozen=True)
class _Periodic:
    name: str
    interval: float
    job: Job
    first: Literal["now", "later"]


@dataclass(frozen=True)
class _Forever:
    name: str
    run: Callable[[], Awaitable[None]]


class BackgroundTasks:
    """Periodic jobs and long-running tasks with one start, one stop and log-and-retry."""

    def __init__(self, stopping: threading.Event | None = None) -> None:
        self._specs: list[_Periodic | _Forever] = []
        self._tasks: list[asyncio.Task[None]] = []
        # Tasks that never return by themselves (listeners): cancelled at the stop.
        self._endless: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        # The shutdown signal, readable from any thread (a server passes its own).
        self.stopping = stopping if stopping is not None else threading.Event()
        self.runs: dict[str, int] = {}  # job name -> completed runs (figures and tests)
        self._limiter: CapacityLimiter | None = None  # made on the loop that runs the jobs

    # --- declaring work -------------------------------------------------------------------

    def every(
        self,
        name: str,
        interval: float,
        job: Job,
        *,
        first: Literal["now", "later"] = "now",
    ) -> None:
        """Run ``job`` every ``interval`` seconds (an interval of 0 or less turns it off)."""
        if interval > 0:
            self._add(_Periodic(name, interval, job, first))

    def keep_running(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Run the coroutine ``run()`` until the stop; start it again when it fails."""
        self._add(_Forever(name, run))

    def _add(self, spec: _Periodic | _Forever) -> None:
        self._specs.append(spec)
        if self._loop is not None:  # already running: start it now
            self._loop.call_soon_threadsafe(self._spawn, spec)

    # --- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start every declared job and task on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._limiter = None  # a limiter belongs to one loop
        self._wake = asyncio.Event()
        for spec in self._specs:
            self._spawn(spec)

    def _spawn(self, spec: _Periodic | _Forever) -> None:
        body = self._periodic(spec) if isinstance(spec, _Periodic) else self._forever(spec)
        task = asyncio.get_running_loop().create_task(body, name=spec.name)
        self._tasks.append(task)
        if isinstance(spec, _Forever):
            self._endless.add(task)

    async def stop(self, timeout: float = 10.0) -> None:
        """The shutdown signal: stop every task, waiting up to ``timeout`` for running jobs."""
        self.stopping.set()
        if self._wake is not None:
            self._wake.set()
        tasks, self._tasks = self._tasks, []
        if not tasks:
            return
        # A task that runs forever (a listener waiting on its connection) has no run to
        # finish: it is cancelled now, not waited for until the timeout.
        for task in self._endless:
            task.cancel()
        self._endless.clear()
        # Jobs between runs return at once; a job in a thread hop finishes its run first.
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for task in done:
            if not task.cancelled() and task.exception() is not None:
                log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    async def sleep(self, seconds: float) -> bool:
        """Sleep on the loop unless the stop comes first; returns False once stopping."""
        assert self._wake is not None, "start() first"
        if seconds > 0 and not self.stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        return not self.stopping.is_set()

    def start_in_thread(self) -> None:
        """Run the tasks on a loop in one thread of their own (a process without a server)."""
        started = threading.Event()

        def run() -> None:
            async def main() -> None:
                await self.start()
                started.set()
                while await self.sleep(3600):
                    pass
                await self.stop()

            asyncio.run(main())

        self._thread = threading.Thread(target=run, name="flowlink-background", daemon=True)
        self._thread.start()
        started.wait(timeout=10)

    def stop_thread(self, timeout: float = 15.0) -> None:
        """Stop tasks started with ``start_in_thread``."""
        self.stopping.set()
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(wake.set)
        if self._thread is not None:
            self._thread.join(timeout=timeout)

    # --- the two shapes of work -----------------------------------------------------------

    async def _periodic(self, spec: _Periodic) -> None:
        if spec.first == "later" and not await self.sleep(spec.interval):
            return
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                await self._call(spec.job)
                self.runs[spec.name] = self.runs.get(spec.name, 0) + 1
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; it runs again in %.1f s", spec.name, spec.interval)
            if not await self.sleep(spec.interval - (time.monotonic() - began)):
                return

    async def _forever(self, spec: _Forever) -> None:
        delay = RETRY_START
        while not self.stopping.is_set():
            began = time.monotonic()
            try:
                await spec.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                if self.stopping.is_set():
                    return
                log.exception("%s failed; starting it again", spec.name)
            else:
                if self.stopping.is_set():
                    return
                log.warning("%s ended; starting it again", spec.name)
            if time.monotonic() - began > RETRY_MAX:
                delay = RETRY_START  # it ran a good while: a fresh failure, not a loop
            if not await self.sleep(delay * random.uniform(0.5, 1.0)):
                return
            delay = min(delay * 2, RETRY_MAX)

    async def _call(self, job: Job) -> None:
        if inspect.iscoroutinefunction(job):
            await job()
        else:
            if self._limiter is None:
                self._limiter = CapacityLimiter(JOB_THREADS)
            await to_thread.run_sync(job, limiter=self._limiter)
