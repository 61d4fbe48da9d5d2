"""Counters for ``bench/link.py --counts`` and ``bench/scale.py --counts``: what a server
process does, by kind.

A server started with ``PYTHONPATH=bench/counting`` and ``FLOWLINK_BENCH_COUNTS=<file>``
imports this first. It counts store transactions (begun, committed, write transactions,
SQL statements), link exchanges sent and answered with their messages, RSA signatures
made and verified, private and public keys parsed, HTTP requests by route, thread hops
(``anyio.to_thread.run_sync``: the API's sync routes and the link's store work), wake-ups
of waiting coroutines, and notifications fired (those heard from PostgreSQL's LISTEN
apart), and the statements by the function that made them; a thread
writes the counters to the file every 0.1 s. The variable is removed from the
environment at once, so runner processes started by the server count nothing.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

COUNTS: Counter[str] = Counter()
_LOCK = threading.Lock()
_PLUMBING = {"flowlink.store.engine", "flowlink.store.notify"}


def count(name: str, amount: int = 1) -> None:
    """Add to a counter (from any thread)."""
    with _LOCK:
        COUNTS[name] += amount


def _origin() -> str:
    """The innermost flowlink function (outside the store and the counters) on the stack."""
    frame = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("flowlink.") and module not in _PLUMBING:
            return f"{module.removeprefix('flowlink.')}.{frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return "?"


def _begun(*_: Any) -> None:
    count("transactions")
    count(f"  transaction from {_origin()}")


def _statement(*_: Any) -> None:
    count("statements")
    count(f"  statement from {_origin()}")


def _counted(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        count(name)
        return function(*args, **kwargs)

    return wrapper


def _install() -> None:
    import anyio.to_thread
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    from flowlink.linking import endpoint, keys, signing, transport
    from flowlink.observability import metrics
    from flowlink.store import engine, notify

    event.listen(Engine, "begin", _begun)
    event.listen(Engine, "commit", lambda *_: count("commits"))
    event.listen(Engine, "before_cursor_execute", _statement)
    engine.Store.write = _counted("write transactions", engine.Store.write)  # type: ignore[method-assign]
    signing._sign = _counted("rsa signatures made", signing._sign)
    signing._verify = _counted("rsa signatures verified", signing._verify)
    keys.load_private_key = _counted("private keys parsed", keys.load_private_key)
    keys.load_public_keys = _counted("public keys parsed", keys.load_public_keys)

    anyio.to_thread.run_sync = _counted("thread hops", anyio.to_thread.run_sync)
    notify.Notifier.fire = _counted("notifications fired", notify.Notifier.fire)  # type: ignore[method-assign]
    woken = notify.AsyncWaiter.wake

    def wake(self: Any, channel: str) -> None:
        if channel not in self._woken_by:  # a wake-up that will make the waiter look again
            count("waiter wake-ups")
            count(f"  waiter wake-ups by {channel}")
        woken(self, channel)

    notify.AsyncWaiter.wake = wake  # type: ignore[method-assign]
    listen = notify.listen_postgres

    class _Heard:
        """The notifier as the PostgreSQL listener sees it: counts what it fires."""

        def __init__(self, notifier: Any) -> None:
            self.notifier = notifier
            self.own_backends = getattr(notifier, "own_backends", set())

        def fire(self, channel: str, payload: str = "") -> None:
            count("notifications fired from LISTEN")
            self.notifier.fire(channel, payload)

    async def listen_postgres(conninfo: str, notifier: Any, ready: Any) -> None:
        await listen(conninfo, _Heard(notifier), ready)

    notify.listen_postgres = listen_postgres
    sent = transport.Transport.exchange_async

    async def exchange_async(self: Any, body: dict[str, Any], **kwargs: Any) -> Any:
        count("exchanges sent")
        count("messages sent", len(body.get("messages") or ()))
        answer = await sent(self, body, **kwargs)
        count("messages received in answers", len(answer.messages))
        return answer

    transport.Transport.exchange_async = exchange_async  # type: ignore[method-assign]

    answer = endpoint.answer_exchange

    async def answer_exchange(*args: Any, **kwargs: Any) -> Any:
        count("exchanges answered")
        return await answer(*args, **kwargs)

    endpoint.answer_exchange = answer_exchange  # type: ignore[assignment]

    noted = metrics.http_request

    def http_request(method: str, route: str, *rest: Any) -> None:
        count(f"http {method} {route}")
        noted(method, route, *rest)

    metrics.http_request = http_request


def _dump(path: Path) -> None:
    while True:
        with _LOCK:
            data = json.dumps(dict(COUNTS))
        partial = path.with_suffix(".part")
        partial.write_text(data)
        partial.replace(path)
        time.sleep(0.1)


_target = os.environ.pop("FLOWLINK_BENCH_COUNTS", None)
if _target:
    _install()
    threading.Thread(target=_dump, args=(Path(_target),), daemon=True, name="counts").start()
