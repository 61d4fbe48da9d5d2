"""Runner side: runs inside a process forked by the zygote.

``runner_main`` sandboxes the process, reports ``ready``, waits for the
``start`` message, runs the flow script once, reports ``end`` and exits.
A runner is never reused.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import gc
import inspect
import io
import linecache
import mmap
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import TracebackType
from typing import Any, NoReturn

from flowlink.execution_status import ExecutionStatus
from flowlink.runtime import flow_api, sandbox
from flowlink.runtime.protocol import FrameDecoder, encode, recv_message

__all__ = ["EXIT_OUT_OF_MEMORY", "EXIT_SANDBOX_FAILED", "Channel", "execute", "runner_main"]

#: Exit code of a runner whose sandbox could not be set up.
EXIT_SANDBOX_FAILED = 170
#: Exit code of a runner that ran out of memory so badly it could not report.
EXIT_OUT_OF_MEMORY = 173

_reserve: mmap.mmap | None = None
_runner_pid = 0

#: log lines are sent at most every _BATCH_DELAY seconds, or earlier when this many pile up
_BATCH_DELAY = 0.02
_BATCH_LINES = 256
_BATCH_CHARS = 64 * 1024


class _ChannelClosed(Exception):
    """The worker went away."""


class Channel:
    """The runner's end of the worker socket (thread-safe)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._send_lock = threading.Lock()
        self._call_lock = threading.Lock()
        self._decoder = FrameDecoder()
        self._backlog: list[dict[str, Any]] = []
        self._next_id = 0
        self.closed = False

    def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        data = encode(message)
        with self._send_lock:
            if self.closed:
                raise _ChannelClosed("channel closed")
            self._sock.sendall(data)

    def receive(self) -> dict[str, Any] | None:
        """Blocking receive of the next message (None on EOF)."""
        return recv_message(self._sock, self._decoder, self._backlog)

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """Relay a flow_api call to the worker and return its result (or raise)."""
        with self._call_lock:
            self._next_id += 1
            call_id = self._next_id
            try:
                self.send({"op": "call", "id": call_id, "method": method, "params": params})
                reply = self.receive()
            except (OSError, _ChannelClosed):
                reply = None
            if reply is None:
                raise flow_api.FlowApiError("lost the connection to the worker")
            if reply.get("op") != "reply" or reply.get("id") != call_id:
                raise flow_api.FlowApiError(
                    f"protocol error: unexpected {reply.get('op')!r} message"
                )
            if "error" in reply and reply["error"] is not None:
                flow_api._raise_remote_error(reply["error"])
            return reply.get("result")

    def log(self, lines: list[str]) -> None:
        """Send log lines (no reply)."""
        if lines:
            self.send({"op": "log", "lines": lines})

    def close(self) -> None:
        """Stop using the socket (in forked children)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()


class _LogBatcher:
    """Collects log lines and sends them in batches.

    The first line after a quiet period goes out at once; lines that follow within
    ``_BATCH_DELAY`` are collected and sent by a lazily started flusher thread (or
    earlier if many pile up). ``flush()`` sends everything pending (before every
    flow_api call and before the end message), so nothing is lost.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._cond = threading.Condition(threading.Lock())
        self._lines: list[str] = []
        self._chars = 0
        self._last = 0.0
        self._thread: threading.Thread | None = None

    def add(self, lines: list[str]) -> None:
        """Queue lines (sends right away if the last batch went out a while ago)."""
        if not lines:
            return
        with self._cond:
            self._lines.extend(lines)
            self._chars += sum(map(len, lines))
            if (
                time.monotonic() - self._last >= _BATCH_DELAY
                or len(self._lines) >= _BATCH_LINES
                or self._chars >= _BATCH_CHARS
            ):
                self._send_locked()
            elif self._thread is None:
                self._thread = threading.Thread(target=self._run, name="flowlink-log", daemon=True)
                self._thread.start()
            else:
                self._cond.notify()

    def flush(self) -> None:
        """Send everything pending now."""
        with self._cond:
            self._send_locked()

    def _send_locked(self) -> None:
        if self._lines:
            lines, self._lines, self._chars = self._lines, [], 0
            with contextlib.suppress(OSError, _ChannelClosed):
                self._channel.log(lines)
            self._last = time.monotonic()

    def _run(self) -> None:
        with self._cond:
            while True:
                if not self._lines:
                    self._cond.wait()
                    continue
                remaining = self._last + _BATCH_DELAY - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                self._send_locked()


class _BinaryAdapter(io.RawIOBase):
    """``sys.stdout.buffer`` replacement that decodes to the text writer."""

    def __init__(self, text: _ChannelWriter) -> None:
        super().__init__()
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raw = bytes(data)
        self._text.write(raw.decode("utf-8", "replace"))
        return len(raw)


class _ChannelWriter(io.TextIOBase):
    """``sys.stdout``/``sys.stderr`` replacement: sends complete lines as log messages."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, batcher: _LogBatcher, fd: int, name: str) -> None:
        super().__init__()
        self._batcher = batcher
        self._fd = fd
        self._name = name
        self._partial = ""
        self._lock = threading.Lock()
        self._buffer = _BinaryAdapter(self)

    @property
    def name(self) -> str:
        return self._name

    @property
    def buffer(self) -> _BinaryAdapter:
        return self._buffer

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._fd

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        if "\n" not in s:
            with self._lock:
                self._partial += s
            return len(s)
        with self._lock:
            lines = (self._partial + s).split("\n")
            self._partial = lines.pop()
            self._batcher.add(lines)
        return len(s)

    def flush(self) -> None:
        """Partial lines are kept until a newline arrives or the execution ends."""

    def flush_partial(self) -> None:
        """Queue a pending partial line, if any, as a line of its own."""
        with self._lock:
            if self._partial:
                partial, self._partial = self._partial, ""
                self._batcher.add([partial])


# --------------------------------------------------------------------------- errors


def _script_line(tb: TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _filter_te(te: traceback.TracebackException, filename: str, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename == filename])
    for nested in (te.__cause__, te.__context__):
        if nested is not None:
            _filter_te(nested, filename, seen)


_TB_HEADER = "Traceback (most recent call last):\n"


def format_script_traceback(exc: BaseException, filename: str) -> str:
    """Traceback of ``exc`` showing only frames of the flow script.

    The leading ``Traceback (most recent call last):`` line is left out (the
    worker adds it when it writes the traceback to the execution log).
    """
    te = traceback.TracebackException.from_exception(exc, capture_locals=False)
    _filter_te(te, filename, set())
    text = "".join(te.format())
    return text[len(_TB_HEADER) :] if text.startswith(_TB_HEADER) else text


def _exc_text(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _with_line(text: str, line: int | None) -> str:
    return f"{text} (line {line})" if line is not None else text


def _is_fork_failure(exc: BaseException) -> bool:
    """True if ``exc`` is a failed fork (EAGAIN: the process limit was hit)."""
    if not isinstance(exc, OSError) or exc.errno != errno.EAGAIN:
        return False
    if getattr(exc, "_flowlink_fork_failed", False):
        return True
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    # subprocess forks in C (_posixsubprocess.fork_exec) from _execute_child
    return tb.tb_frame.f_code.co_filename.endswith("subprocess.py")


def _end(
    status: ExecutionStatus,
    message: str | None,
    outputs: dict[str, Any],
    error_kind: str | None = None,
    tb: str | None = None,
) -> dict[str, Any]:
    return {
        "op": "end",
        "status": status,
        "message": message,
        "outputs": outputs,
        "error_kind": error_kind,
        "traceback": tb,
    }


def _release_reserve() -> None:
    global _reserve
    if _reserve is not None:
        _reserve.close()
        _reserve = None


def _release_memory(exc: BaseException, namespace: dict[str, Any]) -> None:
    _release_reserve()
    traceback.clear_frames(exc.__traceback__)
    namespace.clear()
    gc.collect()


def _classify(
    exc: BaseException,
    filename: str,
    namespace: dict[str, Any],
    limits: dict[str, Any],
    outputs: dict[str, Any],
) -> dict[str, Any]:
    line = _script_line(exc.__traceback__, filename)
    if isinstance(exc, MemoryError):
        _release_memory(exc, namespace)
        return _end(
            ExecutionStatus.ERROR,
            f"memory limit exceeded ({limits.get('memory_mb')} MB)",
            outputs,
            "memory_limit",
            format_script_traceback(exc, filename),
        )
    if isinstance(exc, SystemExit):
        code = exc.code
        shown = "" if code is None else (str(code) if isinstance(code, int) else repr(code))
        return _end(
            ExecutionStatus.ERROR,
            f"script called sys.exit({shown})",
            outputs,
            "sys_exit",
            format_script_traceback(exc, filename),
        )
    if _is_fork_failure(exc):
        return _end(
            ExecutionStatus.ERROR,
            f"process limit exceeded ({limits.get('processes')} processes)",
            outputs,
            "process_limit",
            format_script_traceback(exc, filename),
        )
    kind = "dependency_failed" if isinstance(exc, flow_api.DependencyFailedError) else "exception"
    return _end(
        ExecutionStatus.ERROR,
        _with_line(_exc_text(exc), line),
        outputs,
        kind,
        format_script_traceback(exc, filename),
    )


def _handler_args(handler: Any) -> int:
    """How many positional arguments to pass: 3 (system, this, inputs) or 2."""
    code = getattr(handler, "__code__", None)
    if code is not None and not inspect.ismethod(handler):
        if code.co_flags & inspect.CO_VARARGS:
            return 3
        positional = code.co_argcount
    else:
        try:
            sig = inspect.signature(handler)
        except (TypeError, ValueError):
            return 3
        positional = 0
        for param in sig.parameters.values():
            if param.kind is inspect.Parameter.VAR_POSITIONAL:
                return 3
            if param.kind in (
                inspect.Parameter.POSITIONAL_ONLY,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
            ):
                positional += 1
    if positional >= 3:
        return 3
    if positional == 2:
        return 2
    raise TypeError("handler must accept (system, this) or (system, this, inputs)")


def _json_ok(value: Any) -> str | None:
    try:
        encode({"v": value})
    except (TypeError, ValueError) as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- execution


def execute(
    start: dict[str, Any],
    channel: Channel,
    limits: dict[str, Any],
    flush_output: Callable[[], None],
    log_lines: Callable[[list[str]], None] | None = None,
) -> dict[str, Any]:
    """Run the flow script of a ``start`` message; return the ``end`` message."""
    execution = start.get("execution")
    if not isinstance(execution, dict):
        execution = {}
    name = str(execution.get("name") or "script")
    script = start.get("script")
    if not isinstance(script, str):
        script = ""
    inputs = start.get("inputs")
    if not isinstance(inputs, dict):
        value = execution.get("input_value")
        inputs = value if isinstance(value, dict) else {}
    config = start.get("config")
    if not isinstance(config, dict):
        config = {}
    rt = flow_api._Runtime(channel, execution, inputs, config, flush_output, log_lines)
    flow_api._install(rt)
    this = flow_api.Execution(execution.get("id"), is_self=True, flow_name=name)
    system = flow_api.System()
    outputs = rt.outputs

    filename = f"<flow {name}>"
    linecache.cache[filename] = (len(script), None, script.splitlines(True), filename)
    try:
        code = compile(script, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        msg = exc.msg or "invalid syntax"
        text = f"{type(exc).__name__}: {msg}"
        return _end(
            ExecutionStatus.ERROR,
            _with_line(text, exc.lineno),
            {},
            "syntax_error",
            "".join(traceback.format_exception_only(type(exc), exc)),
        )
    except ValueError as exc:  # e.g. null bytes
        return _end(ExecutionStatus.ERROR, f"SyntaxError: {exc}", {}, "syntax_error", None)

    namespace: dict[str, Any] = {
        "__name__": "__flow__",
        "__file__": filename,
        "__builtins__": builtins,
    }
    result: Any = None
    try:
        exec(code, namespace)
        handler = namespace.get("handler")
        if not callable(handler):
            return _end(
                ExecutionStatus.ERROR,
                "the script does not define handler(system, this[, inputs])",
                outputs,
                "invalid_script",
            )
        try:
            nargs = _handler_args(handler)
        except TypeError as exc:
            return _end(ExecutionStatus.ERROR, str(exc), outputs, "invalid_script")
        result = handler(system, this, inputs) if nargs == 3 else handler(system, this)
        if inspect.iscoroutine(result):  # async def handler(...)
            import asyncio

            result = asyncio.run(result)
    except flow_api._ExecutionEnded:
        pass
    except BaseException as exc:
        if os.getpid() != _runner_pid:
            raise
        if rt.final is None:
            return _classify(exc, filename, namespace, limits, outputs)
    if os.getpid() != _runner_pid:
        raise SystemExit(0)
    final = rt.final
    if final is not None:
        kind = None if final.status == ExecutionStatus.SUCCESS else "flow_error"
        return _end(final.status, final.message, outputs, kind)
    if isinstance(result, dict):
        problem = _json_ok(result)
        if problem is not None:
            return _end(
                ExecutionStatus.ERROR,
                f"returned outputs must be JSON serializable: {problem}",
                outputs,
                "exception",
            )
        outputs.update(result)
    elif result is not None:
        problem = _json_ok(result)
        if problem is not None:
            return _end(
                ExecutionStatus.ERROR,
                f"return value must be JSON serializable: {problem}",
                outputs,
                "exception",
            )
        outputs["result"] = result
    return _end(ExecutionStatus.SUCCESS, None, outputs)


# --------------------------------------------------------------------------- process main


def _install_fork_hooks(channel: Channel) -> None:
    real_fork = os.fork

    def fork() -> int:
        try:
            return real_fork()
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                exc._flowlink_fork_failed = True  # type: ignore[attr-defined]
            raise

    fork.__doc__ = real_fork.__doc__
    os.fork = fork

    def after_in_child() -> None:
        channel.close()
        rt = flow_api._runtime
        if rt is not None:
            rt.disabled_reason = "flow_api cannot be used from a forked child process"
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False, buffering=1)  # noqa: SIM115

    os.register_at_fork(after_in_child=after_in_child)


def _child_exit(exc: BaseException | None) -> NoReturn:
    """A process forked by the script left the handler: exit quietly."""
    code = 0
    if isinstance(exc, SystemExit):
        code = exc.code if isinstance(exc.code, int) else 1
    elif exc is not None:
        code = 1
        if not _is_fork_failure(exc):
            with contextlib.suppress(BaseException):
                print(f"forked child {os.getpid()}: {_exc_text(exc)}", file=sys.stderr)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(code)


def runner_main(chan_fd: int, out_fd: int, config: dict[str, Any]) -> NoReturn:
    """Entry point of a freshly forked runner; never returns."""
    global _reserve, _runner_pid
    zygote_pid = os.getppid()
    os.set_inheritable(chan_fd, False)
    # family and type given: no getsockopt/getsockname calls to find them out
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, chan_fd)
    sock.setblocking(True)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if out_fd >= 0:
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        if out_fd > 2:
            os.close(out_fd)
    channel = Channel(sock)
    try:
        info = sandbox.enter(config)
        if os.getppid() != zygote_pid:
            raise RuntimeError("zygote died during start-up")
    except BaseException as exc:
        try:
            channel.send({"op": "failed", "message": f"sandbox setup failed: {_exc_text(exc)}"})
        finally:
            os._exit(EXIT_SANDBOX_FAILED)
    _runner_pid = os.getpid()
    batcher = _LogBatcher(channel)
    stdout = _ChannelWriter(batcher, 1, "<stdout>")
    stderr = _ChannelWriter(batcher, 2, "<stderr>")
    sys.stdout = stdout
    sys.stderr = stderr
    if sys.stdin is None or sys.stdin.fileno() != 0:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115
    # else the zygote's sys.stdin reads fd 0, which is /dev/null (above) and was never read
    sys.argv = ["flow"]
    _install_fork_hooks(channel)
    # address space kept in reserve (RLIMIT_AS counts mappings, not touched pages)
    # so that a MemoryError can still be reported
    _reserve = mmap.mmap(-1, 4 << 20)

    def flush_output() -> None:
        stdout.flush_partial()
        stderr.flush_partial()
        batcher.flush()

    def log_lines(lines: list[str]) -> None:
        stdout.flush_partial()
        stderr.flush_partial()
        batcher.add(lines)

    code = 0
    try:
        channel.send({"op": "ready", "pid": _runner_pid, "uid": info.uid, "tmpdir": info.tmpdir})
        start = channel.receive()
        if start is None or start.get("op") != "start":
            os._exit(0)
        try:
            end = execute(start, channel, config["limits"], flush_output, log_lines)
        except BaseException as exc:
            if os.getpid() != _runner_pid:
                _child_exit(None if isinstance(exc, SystemExit) and exc.code == 0 else exc)
            raise
        flush_output()
        try:
            channel.send(end)
        except (TypeError, ValueError) as exc:
            channel.send(
                {
                    "op": "end",
                    "status": ExecutionStatus.ERROR,
                    "message": f"outputs must be JSON serializable: {exc}",
                    "outputs": {},
                    "error_kind": "exception",
                    "traceback": None,
                }
            )
    except MemoryError:
        _release_reserve()
        gc.collect()
        try:
            flush_output()
            channel.send(
                {
                    "op": "end",
                    "status": ExecutionStatus.ERROR,
                    "message": f"memory limit exceeded ({config['limits'].get('memory_mb')} MB)",
                    "outputs": {},
                    "error_kind": "memory_limit",
                    "traceback": None,
                }
            )
        except BaseException:
            code = EXIT_OUT_OF_MEMORY
    except BaseException:
        code = 1
    os._exit(code)
