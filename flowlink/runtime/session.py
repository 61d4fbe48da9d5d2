"""Worker side: drive one execution on one runner."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from flowlink.execution_status import ExecutionStatus, Outcome
from flowlink.runtime import flow_api
from flowlink.runtime.pool import Runner
from flowlink.runtime.protocol import FrameDecoder, ProtocolError, encode
from flowlink.runtime.runner import EXIT_OUT_OF_MEMORY, EXIT_SANDBOX_FAILED

__all__ = ["ERROR_KINDS", "Outcome", "drive"]

log = logging.getLogger(__name__)
ERROR = ExecutionStatus.ERROR

#: Every ``error_kind`` an Outcome may carry.
ERROR_KINDS = frozenset(
    {
        "syntax_error",  # the script does not compile
        "invalid_script",  # no usable handler() in the script
        "exception",  # uncaught exception
        "dependency_failed",  # uncaught DependencyFailedError (a child failed)
        "flow_error",  # the script called this.error(...)
        "sys_exit",  # the script called sys.exit()
        "memory_limit",  # MemoryError under RLIMIT_AS, or the control group's OOM killer
        "process_limit",  # fork failed under RLIMIT_NPROC
        "cpu_limit",  # SIGXCPU (RLIMIT_CPU)
        "timeout",  # deadline passed
        "cancelled",  # cancelled event set
        "runner_lost",  # runner died / protocol error
        "internal",  # the start message could not be sent
    }
)

_POLL_INTERVAL = 0.05
# Raw output without a newline is cut into lines of this size, so it cannot pile up.
_MAX_PARTIAL_LINE = 256 * 1024
_EXIT_WAIT_AFTER_END = 2.0
_POLLIN = select.POLLIN | select.POLLHUP | select.POLLERR


def _seconds(value: float) -> str:
    return f"{round(value, 1):g}"


def _error_payload(exc: BaseException) -> dict[str, str]:
    if isinstance(exc, flow_api.FlowApiError):
        name = type(exc).__name__
        known = name in flow_api.ERROR_TYPES
        return {"type": name if known else "FlowApiError", "message": str(exc)}
    return {"type": "FlowApiError", "message": "internal error"}


class _Driver:
    def __init__(
        self,
        runner: Runner,
        handle_call: Callable[[str, dict[str, Any]], Any],
        on_logs: Callable[[list[str]], None],
        deadline: float | None,
        cancelled: threading.Event,
        started: float,
    ) -> None:
        self.runner = runner
        self.handle_call = handle_call
        self.on_logs = on_logs
        self.deadline = deadline
        self.cancelled = cancelled
        self.started = started
        self.logs: list[str] = []
        self.raw = b""
        self.output_open = True
        self.decoder = FrameDecoder()

    # ------------------------------------------------------------------ output

    def flush_logs(self) -> None:
        if self.logs:
            lines, self.logs = self.logs, []
            self.on_logs(lines)

    def read_output(self) -> None:
        """Read what the runner's processes wrote to fd 1/2 directly (non-blocking)."""
        while self.output_open:
            try:
                chunk = os.read(self.runner.output_fd, 65536)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.output_open = False
                break
            data = self.raw + chunk
            *lines, self.raw = data.split(b"\n")
            self.logs.extend(line.decode("utf-8", "replace") for line in lines)
            if len(self.raw) > _MAX_PARTIAL_LINE:
                self.logs.append(self.raw.decode("utf-8", "replace"))
                self.raw = b""

    def finish_output(self) -> None:
        self.read_output()
        if self.raw:
            self.logs.append(self.raw.decode("utf-8", "replace"))
            self.raw = b""
        self.flush_logs()

    # ------------------------------------------------------------------ endings

    def stop(self, why: str) -> Outcome:
        self.runner.kill()
        self.finish_output()
        if why == "cancelled":
            return Outcome(ExecutionStatus.CANCELLED, "execution cancelled", {}, "cancelled")
        assert self.deadline is not None
        limit = _seconds(self.deadline - self.started)
        return Outcome(ERROR, f"maximum runtime of {limit} s exceeded", {}, "timeout")

    def limit_outcome(self, hit: str | None = None) -> Outcome | None:
        """The error for a control-group limit the execution went over, if any (``hit``, else
        what the runner's exit told)."""
        limits = self.runner.limits
        hit = hit or self.runner.limit_hit
        if hit == "memory":
            return Outcome(
                ERROR, f"memory limit exceeded ({limits.memory_mb} MB)", {}, "memory_limit"
            )
        if hit == "processes":
            return Outcome(
                ERROR,
                f"process limit exceeded ({limits.processes} processes)",
                {},
                "process_limit",
            )
        if hit == "cpu":
            return Outcome(
                ERROR, f"CPU time limit exceeded ({limits.cpu_seconds} s)", {}, "cpu_limit"
            )
        return None

    def lost(self, detail: str | None = None) -> Outcome:
        runner = self.runner
        info = None if detail else runner.wait_exit(1.0)
        if info is None:
            runner.kill()
            info = None if detail else runner.exit_info
        self.finish_output()
        over = self.limit_outcome()
        if over is not None:
            return over
        if detail:
            return Outcome(ERROR, f"runner lost: {detail}", {}, "runner_lost")
        rc, sig = info if info is not None else (None, None)
        if sig == signal.SIGXCPU:
            return Outcome(
                ERROR, f"CPU time limit exceeded ({runner.limits.cpu_seconds} s)", {}, "cpu_limit"
            )
        if rc == EXIT_OUT_OF_MEMORY:
            return Outcome(
                ERROR, f"memory limit exceeded ({runner.limits.memory_mb} MB)", {}, "memory_limit"
            )
        if rc == EXIT_SANDBOX_FAILED:
            return Outcome(ERROR, "runner failed to start the execution", {}, "runner_lost")
        if sig is not None:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return Outcome(ERROR, f"runner was killed by {name}", {}, "runner_lost")
        if rc is not None:
            return Outcome(
                ERROR, f"runner exited unexpectedly with exit code {rc}", {}, "runner_lost"
            )
        return Outcome(ERROR, "lost the connection to the runner", {}, "runner_lost")

    def end(self, msg: dict[str, Any]) -> Outcome:
        self.runner.ended = True
        self.finish_output()
        if self.runner.uses_cgroup:
            # a process of the execution may have been killed for a limit of the whole group:
            # the zygote reads the group's counters now, without waiting for the runner's exit
            over = self.limit_outcome(self.runner.limit_at_end(_EXIT_WAIT_AFTER_END))
            if over is not None:
                return over
        status = msg.get("status")
        outputs = msg.get("outputs")
        message = msg.get("message")
        kind = msg.get("error_kind")
        tb = msg.get("traceback")
        if status not in (ExecutionStatus.SUCCESS, ERROR):
            return Outcome(ERROR, f"runner lost: invalid end status {status!r}", {}, "runner_lost")
        return Outcome(
            ExecutionStatus(status),
            None if message is None else str(message),
            outputs if isinstance(outputs, dict) else {},
            None if status == ExecutionStatus.SUCCESS else (str(kind) if kind else "exception"),
            None if tb is None else str(tb),
        )

    # ------------------------------------------------------------------ calls

    def call(self, msg: dict[str, Any]) -> None:
        call_id = msg.get("id")
        method = msg.get("method")
        params = msg.get("params")
        reply: dict[str, Any]
        if not isinstance(method, str) or not isinstance(params, dict):
            reply = {
                "op": "reply",
                "id": call_id,
                "error": {"type": "FlowApiError", "message": "bad call"},
            }
        else:
            self.flush_logs()
            try:
                result = self.handle_call(method, params)
                reply = {"op": "reply", "id": call_id, "result": result}
            except Exception as exc:
                if not isinstance(exc, flow_api.FlowApiError):
                    log.exception("flow_api call %s failed", method)
                reply = {"op": "reply", "id": call_id, "error": _error_payload(exc)}
        try:
            data = encode(reply)
        except (TypeError, ValueError):
            log.exception("result of flow_api call %s is not JSON serializable", method)
            data = encode(
                {
                    "op": "reply",
                    "id": call_id,
                    "error": {"type": "FlowApiError", "message": "internal error"},
                }
            )
        with contextlib.suppress(OSError):  # if the runner is gone, EOF follows
            self.runner.sock.sendall(data)

    # ------------------------------------------------------------------ loop

    def run(self, start: dict[str, Any]) -> Outcome:
        message = dict(start)
        message["op"] = "start"
        try:
            data = encode(message)
        except (TypeError, ValueError) as exc:
            self.runner.kill()
            return Outcome(ERROR, f"could not start the execution: {exc}", {}, "internal")
        try:
            self.runner.sock.sendall(data)
        except OSError:
            return self.lost()
        sock = self.runner.sock
        sock_fd = sock.fileno()
        out_fd = self.runner.output_fd
        poller = select.poll()
        poller.register(sock_fd, _POLLIN)
        poller.register(out_fd, _POLLIN)
        while True:
            if self.cancelled.is_set():
                return self.stop("cancelled")
            timeout = _POLL_INTERVAL
            if self.deadline is not None:
                remaining = self.deadline - time.monotonic()
                if remaining <= 0:
                    return self.stop("timeout")
                timeout = min(timeout, remaining)
            events = poller.poll(max(1, int(timeout * 1000 + 0.999)))
            for fd, _event in events:
                if fd == out_fd:
                    self.read_output()
                    if not self.output_open:
                        poller.unregister(out_fd)
                    continue
                try:
                    chunk = sock.recv(262144)
                except OSError:
                    chunk = b""
                if not chunk:
                    return self.lost()
                try:
                    messages = self.decoder.feed(chunk)
                except ProtocolError as exc:
                    return self.lost(str(exc))
                for msg in messages:
                    op = msg.get("op")
                    if op == "log":
                        lines = msg.get("lines")
                        if isinstance(lines, list):
                            self.logs.extend(str(line) for line in lines)
                    elif op == "call":
                        self.call(msg)
                    elif op == "end":
                        return self.end(msg)
                    else:
                        return self.lost(f"unexpected message {op!r}")
            self.flush_logs()


def drive(
    runner: Runner,
    start: dict[str, Any],
    *,
    handle_call: Callable[[str, dict[str, Any]], Any],
    on_logs: Callable[[list[str]], None],
    deadline: float | None,
    cancelled: threading.Event,
) -> Outcome:
    """Run one execution on ``runner`` and return its :class:`Outcome`.

    ``start`` is the start message without ``op``: ``{"execution": {...},
    "script": str, "inputs": dict, "config": dict}``.

    ``handle_call(method, params)`` serves the script's ``flow_api`` calls (see
    docs/runtime.md for methods). It returns a JSON-serializable result or raises
    :class:`flowlink.runtime.flow_api.FlowApiError` (or its subclasses
    ``ResourceNotFoundError``, ``PermissionDeniedError``, ``DependencyFailedError``), which
    the script receives as the same exception; any other exception is
    logged and reported to the script as ``FlowApiError("internal error")``.
    ``handle_call`` runs in the calling thread: while it blocks, ``deadline`` and
    ``cancelled`` are not checked, so a call that may block for long (e.g.
    ``execution.wait``) must itself poll ``cancelled`` and the deadline and return
    or raise promptly when either fires; ``drive`` then kills the runner.

    ``on_logs(lines)`` receives log lines (``this.log``, ``print`` and raw output of
    the runner's processes) in batches. ``deadline`` is a ``time.monotonic()``
    value (None = no limit); ``cancelled`` is checked at least every 50 ms.

    The runner is always killed and cleaned up before this returns (its process,
    every process of its sandbox uid and its temp dir); it cannot be reused.
    """
    runner._claim()
    started = time.monotonic()
    try:
        return _Driver(runner, handle_call, on_logs, deadline, cancelled, started).run(start)
    finally:
        runner.close()
