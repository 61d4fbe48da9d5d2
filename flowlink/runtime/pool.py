"""Worker side: the zygote process and a pool of pre-forked, sandboxed runners.

Usage::

    pool = RunnerPool(warm_size=4, limits=RunnerLimits(memory_mb=512),
                      protected_paths=[store_path, store_path + "-wal", key_file])
    pool.start()
    runner = pool.acquire()          # one runner = one execution, never reused
    outcome = drive(runner, start, handle_call=..., on_logs=..., deadline=..., cancelled=...)
    pool.close()
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import itertools
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from flowlink.runtime import cgroups, sandbox
from flowlink.runtime.errors import RunnerError
from flowlink.runtime.protocol import FrameDecoder, ProtocolError, encode, recv_message

__all__ = ["Runner", "RunnerLimits", "RunnerPool"]

log = logging.getLogger(__name__)

_READY_TIMEOUT = 15.0
_EXIT_WAIT_AFTER_END = 2.0
_KILL_WAIT = 5.0


@dataclass(frozen=True)
class RunnerLimits:
    """Resource limits applied to every runner (per process, see docs/runtime.md)."""

    cpu_seconds: int = 3600
    memory_mb: int = 2048
    open_files: int = 256
    processes: int = 64


ExitInfo = tuple[int | None, int | None]  # (returncode, signal)


class _Zygote:
    """Handle to one zygote process (pool side)."""

    def __init__(self, python: str, config: dict[str, Any]) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctl = parent
        self._send_lock = threading.Lock()
        self._cv = threading.Condition()
        self._rids = itertools.count(1)
        self._forks: dict[int, dict[str, Any]] = {}
        self._live: set[int] = set()
        self._exits: dict[int, ExitInfo] = {}
        self._limits: dict[int, str] = {}
        self._groups: dict[int, tuple[str, cgroups.Counters]] = {}  # pid -> group, baseline
        self.dead = False
        try:
            self.proc = subprocess.Popen(
                [python, "-I", "-m", "flowlink.runtime.zygote", str(child.fileno())],
                env=dict(sandbox.SCRUBBED_ENV),
                cwd="/",
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            child.close()
        try:
            parent.settimeout(60)
            parent.send(json.dumps({"op": "init", "config": config}).encode())
            data = parent.recv(1 << 16)
            hello = json.loads(data) if data else {}
            parent.settimeout(None)
        except (OSError, ValueError) as exc:
            self._abort()
            raise RunnerError(f"zygote did not start: {exc}") from exc
        if hello.get("op") != "hello":
            self._abort()
            raise RunnerError(f"zygote failed to start: {hello.get('message') or 'no answer'}")
        self.pid: int = int(hello["pid"])
        self.mode: str = str(hello["mode"])
        self.hide_proc: bool = bool(hello.get("hide_proc"))
        self.limits: str = str(hello.get("limits") or "rlimit")
        self.limits_note: str = str(hello.get("limits_note") or "")
        self.private_tmp: bool = bool(hello.get("private_tmp"))
        self.seccomp: bool = bool(hello.get("seccomp"))
        raw_cgroup = hello.get("cgroup")
        self.cgroup = cgroups.CgroupSetup.from_json(raw_cgroup) if raw_cgroup else None
        self._reader = threading.Thread(
            target=self._read_loop, name="flowlink-zygote-reader", daemon=True
        )
        self._reader.start()

    def _abort(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        self._ctl.close()
        self.dead = True

    # ------------------------------------------------------------------ reader

    def _read_loop(self) -> None:
        while True:
            try:
                data = self._ctl.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            try:
                msg = json.loads(data)
            except ValueError:
                continue
            op = msg.get("op")
            with self._cv:
                if op in ("forked", "fork_failed"):
                    if op == "forked":
                        self._live.add(int(msg["pid"]))
                        if msg.get("group") and isinstance(msg.get("baseline"), list):
                            oom, forks, cpu = msg["baseline"]
                            self._groups[int(msg["pid"])] = (
                                str(msg["group"]),
                                (int(oom), int(forks), float(cpu)),
                            )
                    self._forks[int(msg["rid"])] = msg
                elif op == "exited":
                    pid = int(msg["pid"])
                    if pid in self._live:
                        self._exits[pid] = (msg.get("returncode"), msg.get("signal"))
                        if msg.get("limit"):
                            self._limits[pid] = str(msg["limit"])
                self._cv.notify_all()
        with self._cv:
            self.dead = True
            self._cv.notify_all()
        # reap it (it exits right after closing its socket; if not, close() kills it)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)

    # ------------------------------------------------------------------ commands

    def _send(self, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
        data = json.dumps(message).encode()
        with self._send_lock:
            if fds:
                socket.send_fds(self._ctl, [data], list(fds))
            else:
                self._ctl.send(data)

    def fork(self, count: int) -> list[tuple[int, int, socket.socket, int]]:
        """Fork ``count`` runners; returns ``(pid, uid, socket, output_fd)`` for each success."""
        pending: list[tuple[int, socket.socket, int]] = []
        try:
            for _ in range(count):
                parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                rid = next(self._rids)
                try:
                    self._send({"op": "fork", "rid": rid}, [child.fileno(), out_w])
                except OSError as exc:
                    parent.close()
                    os.close(out_r)
                    raise RunnerError(f"zygote unavailable: {exc}") from exc
                finally:
                    child.close()
                    os.close(out_w)
                pending.append((rid, parent, out_r))
        except RunnerError:
            if not pending:
                raise
        results: list[tuple[int, int, socket.socket, int]] = []
        errors: list[str] = []
        deadline = time.monotonic() + _READY_TIMEOUT
        for rid, parent, out_r in pending:
            with self._cv:
                while rid not in self._forks and not self.dead:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cv.wait(remaining)
                reply = self._forks.pop(rid, None)
            if reply is None or reply.get("op") != "forked":
                parent.close()
                os.close(out_r)
                errors.append(
                    "zygote died" if reply is None else str(reply.get("message") or "fork failed")
                )
                continue
            results.append((int(reply["pid"]), int(reply["uid"]), parent, out_r))
        if not results and errors:
            raise RunnerError(errors[0])
        return results

    def watch(self, pid: int) -> None:
        """Tell the zygote the runner starts its execution: watch its control group."""
        with contextlib.suppress(OSError):
            self._send({"op": "watch", "pid": pid})

    def kill(self, pid: int) -> None:
        """Ask the zygote to SIGKILL the runner and sweep its uid."""
        with contextlib.suppress(OSError):
            self._send({"op": "kill", "pid": pid})

    def wait_exit(self, pid: int, timeout: float) -> ExitInfo | None:
        """Exit info of a runner (only once its uid was swept), or None on timeout."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while pid not in self._exits:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.dead:
                    return self._exits.get(pid)
                self._cv.wait(remaining)
            return self._exits[pid]

    def limit_so_far(self, pid: int, cpu_limit: float) -> tuple[bool, str | None]:
        """Which limit the runner's control group went over up to now, read from the group's
        counters in this process: ``(known, limit)``; not known without control groups."""
        with self._cv:
            group = self._groups.get(pid)
        if group is None or self.cgroup is None:
            return False, None
        return True, cgroups.exceeded(self.cgroup, group[0], cpu_limit, group[1])

    def limit_of(self, pid: int) -> str | None:
        """The limit (``memory``, ``processes``, ``cpu``) the runner's control group went over."""
        with self._cv:
            return self._limits.get(pid)

    def forget(self, pid: int) -> None:
        """Stop tracking a closed runner."""
        with self._cv:
            self._live.discard(pid)
            self._exits.pop(pid, None)
            self._groups.pop(pid, None)
            self._limits.pop(pid, None)

    def close(self) -> None:
        """Kill every runner of this zygote and the zygote itself."""
        with contextlib.suppress(OSError):
            self._send({"op": "shutdown"})
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        with contextlib.suppress(OSError):
            self._ctl.shutdown(socket.SHUT_RDWR)
        self._reader.join(5)
        self._ctl.close()
        with self._cv:
            self.dead = True
            self._cv.notify_all()


class Runner:
    """One sandboxed, pre-started process that runs exactly one execution.

    Attributes: ``pid``, ``uid`` (its sandbox uid) and ``tmpdir`` (its private
    working directory, removed by :meth:`close`).
    """

    def __init__(
        self,
        zygote: _Zygote,
        pid: int,
        uid: int,
        tmpdir: str,
        sock: socket.socket,
        output_fd: int,
        limits: RunnerLimits,
    ) -> None:
        self.pid = pid
        self.uid = uid
        self.tmpdir = tmpdir
        self.limits = limits
        self.mode = zygote.mode
        self.sock = sock
        self.output_fd = output_fd
        self._zygote = zygote
        self._lock = threading.Lock()
        self._used = False
        self._closed = False
        self.ended = False
        self._exit: ExitInfo | None = None

    def __repr__(self) -> str:
        return f"<Runner pid={self.pid} uid={self.uid} closed={self._closed}>"

    # ------------------------------------------------------------------ used by drive

    def _claim(self) -> None:
        with self._lock:
            if self._used or self._closed:
                raise RunnerError("a runner can only be used for one execution")
            self._used = True
        if self.uses_cgroup:
            self._zygote.watch(self.pid)

    def send(self, message: dict[str, Any]) -> None:
        """Send one protocol message to the runner."""
        self.sock.sendall(encode(message))

    @property
    def limit_hit(self) -> str | None:
        """``memory``, ``processes`` or ``cpu`` if the execution's control group went over
        that limit (known once the runner exited; None with the rlimit fallback)."""
        return self._zygote.limit_of(self.pid) if self._exit is not None else None

    @property
    def uses_cgroup(self) -> bool:
        """True when the execution's limits are enforced by a control group."""
        return self._zygote.limits != "rlimit"

    def limit_at_end(self, timeout: float) -> str | None:
        """The limit of the control group the execution went over up to now (asked when the
        runner reported its end), without waiting for the runner's exit.

        The counters only grow, so none over means none was hit before the end. A hit is
        confirmed by the zygote's last look at the group when the runner exited (in the rare
        case that the group was already handed to another runner, ours only looked over).
        """
        known, limit = self._zygote.limit_so_far(self.pid, float(self.limits.cpu_seconds))
        if known and limit is None:
            return None
        if self.wait_exit(timeout) is not None:
            return self.limit_hit
        return limit

    @property
    def exit_info(self) -> ExitInfo | None:
        """``(returncode, signal)`` once the runner is known to be gone."""
        return self._exit

    def wait_exit(self, timeout: float) -> ExitInfo | None:
        """Wait until the runner exited (and its uid was swept); None on timeout."""
        if self._exit is None:
            self._exit = self._zygote.wait_exit(self.pid, timeout)
        return self._exit

    # ------------------------------------------------------------------ public

    def kill(self) -> None:
        """Kill the runner and every process it started (synchronously), remove its tmpdir."""
        self._kill()
        _remove_tree(self.tmpdir)

    def _kill(self) -> None:
        if self.wait_exit(0) is not None:
            return
        if not self._zygote.dead:
            self._zygote.kill(self.pid)
            info = self._zygote.wait_exit(self.pid, _KILL_WAIT)
            if info is not None:
                self._exit = info
                return
            log.warning("runner %d: zygote did not confirm the kill, killing directly", self.pid)
        if self.mode in ("full", "uid"):
            sandbox.kill_uid_processes(self.uid)
        else:
            with contextlib.suppress(OSError):
                os.killpg(self.pid, signal.SIGKILL)
        self._exit = (None, signal.SIGKILL)

    def close(self) -> None:
        """Make sure the runner is gone, release its fds and remove its tmpdir."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self.wait_exit(_EXIT_WAIT_AFTER_END if self.ended else 0) is None:
                self._kill()
        finally:
            self._zygote.forget(self.pid)
            self.sock.close()
            with contextlib.suppress(OSError):
                os.close(self.output_fd)
            _remove_tree(self.tmpdir)


def _remove_tree(path: str) -> None:
    """rmtree that copes with entries a script made unwritable; never touches ``path``'s parent."""
    if not path:
        return
    try:
        os.rmdir(path)  # the usual case: the execution left its directory empty
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    if not os.path.lexists(path):
        return

    def onerror(func: Any, target: str, exc_info: Any) -> None:
        if not isinstance(exc_info[1], PermissionError) or target == path:
            return
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(target), 0o700)  # inside the tree (target != path)
            if os.path.isdir(target) and not os.path.islink(target):
                os.chmod(target, 0o700)
            func(target)

    with contextlib.suppress(OSError):
        shutil.rmtree(path, onerror=onerror)


_BASE_PREFIX = "flowlink-runners-"
_LOCK_NAME = ".owner.lock"


def _base_parent() -> str:
    """Where runner base dirs go: ``/run`` for root (outside the world-writable directories
    that every runner gets privately), the temp dir otherwise."""
    if os.geteuid() == 0 and os.path.isdir("/run") and os.access("/run", os.W_OK):
        return "/run"
    return tempfile.gettempdir()


def _remove_stale_base_dirs(parent: str) -> None:
    """Remove runner base dirs left behind by pools whose process died."""
    try:
        names = [n for n in os.listdir(parent) if n.startswith(_BASE_PREFIX)]
    except OSError:
        return
    for name in names:
        path = os.path.join(parent, name)
        try:
            fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # not ours, or not a pool base dir
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its pool is alive
        finally:
            os.close(fd)
        log.info("removing stale runner directory %s", path)
        _remove_tree(path)


class RunnerPool:
    """Keeps ``warm_size`` sandboxed runners forked ahead of time.

    :param warm_size: runners kept ready (a background thread refills).
    :param limits: resource limits of every runner.
    :param protected_paths: files/directories runners must not see (hidden in
        the runner's mount namespace when running as root).
    :param python: interpreter for the zygote (must be able to import flowlink).
    :param force_unprivileged: use the weaker non-root sandbox even as root
        (testing only).
    :param cgroups: limit each execution with a control group where the machine allows it;
        False selects the rlimit fallback (per process) everywhere.
    """

    def __init__(
        self,
        *,
        warm_size: int = 4,
        limits: RunnerLimits = RunnerLimits(),
        protected_paths: Sequence[str] = (),
        python: str = sys.executable,
        force_unprivileged: bool = False,
        cgroups: bool = True,
    ) -> None:
        if warm_size < 0:
            raise ValueError("warm_size must be >= 0")
        self.warm_size = warm_size
        self.limits = limits
        self.protected_paths = [os.path.abspath(p) for p in protected_paths]
        self.python = python
        self._force_unprivileged = force_unprivileged
        self._cgroups = cgroups
        self._cv = threading.Condition()
        self._zlock = threading.Lock()
        self._warm: collections.deque[Runner] = collections.deque()
        self._spawning = 0
        self._closed = False
        self._started = False
        self._zygote: _Zygote | None = None
        self._refill: threading.Thread | None = None
        self._lock_fd = -1
        self.base_dir = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the zygote and the refill thread."""
        with self._cv:
            if self._started:
                raise RunnerError("pool already started")
            self._started = True
        parent = _base_parent()
        _remove_stale_base_dirs(parent)
        self.base_dir = tempfile.mkdtemp(prefix=_BASE_PREFIX, dir=parent)
        os.chmod(self.base_dir, 0o711)
        # held while the pool lives: lets a later pool recognise a stale base dir
        # (locked before it gets its final name, so nobody sees it unlocked)
        tmp_lock = os.path.join(self.base_dir, _LOCK_NAME + ".new")
        self._lock_fd = os.open(tmp_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.rename(tmp_lock, os.path.join(self.base_dir, _LOCK_NAME))
        try:
            self._zygote = self._new_zygote()
        except BaseException:
            self._release_base_dir()
            raise
        self._refill = threading.Thread(
            target=self._refill_loop, name="flowlink-pool-refill", daemon=True
        )
        self._refill.start()

    def close(self) -> None:
        """Kill the zygote and every runner (warm or in use); remove temp dirs."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            warm = list(self._warm)
            self._warm.clear()
            self._cv.notify_all()
        if self._refill is not None:
            self._refill.join(30)
        with self._zlock:
            zygote = self._zygote
        if zygote is not None:
            zygote.close()
        for runner in warm:
            runner.close()
        self._release_base_dir()

    def _release_base_dir(self) -> None:
        if self.base_dir:
            _remove_tree(self.base_dir)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> RunnerPool:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ info

    @property
    def mode(self) -> str:
        """Sandbox mode chosen by the zygote: ``full``, ``uid`` or ``unprivileged``."""
        return self._zygote.mode if self._zygote is not None else "unknown"

    def sandbox_info(self) -> dict[str, Any]:
        """What is in force for every execution (reported by ``GET /api/v1/health``)."""
        zygote = self._zygote
        info: dict[str, Any] = {
            "mode": self.mode,
            "limits": zygote.limits if zygote is not None else "unknown",
            "private_tmp": zygote.private_tmp if zygote is not None else False,
            "seccomp": zygote.seccomp if zygote is not None else False,
            "memory_mb": self.limits.memory_mb,
            "processes": self.limits.processes,
            "cpu_seconds": self.limits.cpu_seconds,
            "open_files": self.limits.open_files,
        }
        if zygote is not None and zygote.limits_note:
            info["limits_note"] = zygote.limits_note
        return info

    @property
    def zygote_pid(self) -> int | None:
        """Pid of the current zygote process."""
        return self._zygote.pid if self._zygote is not None else None

    @property
    def warm_count(self) -> int:
        """Number of runners ready to be acquired right now."""
        with self._cv:
            return len(self._warm)

    # ------------------------------------------------------------------ runners

    def acquire(self) -> Runner:
        """Return a fresh runner (warm if available, else forked now)."""
        with self._cv:
            if self._closed or not self._started:
                raise RunnerError("runner pool is not running")
            while self._warm:
                runner = self._warm.popleft()
                self._cv.notify_all()
                if runner._zygote.dead or runner.wait_exit(0) is not None:
                    # died while waiting (zygote gone, OOM killer...): never hand it out
                    threading.Thread(target=runner.close, daemon=True).start()
                    continue
                return runner
        runners = self._spawn(1)
        with self._cv:
            self._cv.notify_all()
        return runners[0]

    def _config(self) -> dict[str, Any]:
        return {
            "base_dir": self.base_dir,
            "limits": asdict(self.limits),
            "protected_paths": self.protected_paths,
            "force_unprivileged": self._force_unprivileged,
            "cgroups": self._cgroups,
        }

    def _new_zygote(self) -> _Zygote:
        return _Zygote(self.python, self._config())

    def _current_zygote(self) -> _Zygote:
        with self._zlock:
            zygote = self._zygote
            if zygote is None or (zygote.dead and not self._closed):
                if zygote is not None:
                    log.warning("flowlink zygote died, starting a new one")
                    with contextlib.suppress(Exception):
                        zygote.close()
                zygote = self._zygote = self._new_zygote()
            return zygote

    def _spawn(self, count: int) -> list[Runner]:
        zygote = self._current_zygote()
        forked = zygote.fork(count)
        runners: list[Runner] = []
        errors: list[BaseException] = []
        for pid, uid, sock, out_fd in forked:
            try:
                runners.append(self._await_ready(zygote, pid, uid, sock, out_fd))
            except Exception as exc:
                errors.append(exc)
        if not runners:
            raise errors[0] if errors else RunnerError("no runner could be started")
        for error in errors:
            log.warning("runner failed to start: %s", error)
        return runners

    def _await_ready(
        self, zygote: _Zygote, pid: int, uid: int, sock: socket.socket, out_fd: int
    ) -> Runner:
        decoder = FrameDecoder()
        backlog: list[dict[str, Any]] = []
        msg: dict[str, Any] | None
        try:
            sock.settimeout(_READY_TIMEOUT)
            msg = recv_message(sock, decoder, backlog)
            sock.settimeout(None)
        except (OSError, ProtocolError) as exc:
            msg = {"op": "failed", "message": f"no ready message ({exc})"}
        if msg is not None and msg.get("op") == "ready" and not backlog:
            os.set_blocking(out_fd, False)
            return Runner(
                zygote, pid, int(msg["uid"]), str(msg["tmpdir"]), sock, out_fd, self.limits
            )
        # failed: collect what we can and clean up
        reason = "exited before it was ready" if msg is None else str(msg.get("message") or msg)
        tmpdir = str(msg.get("tmpdir") or "") if msg else ""
        dead = Runner(zygote, pid, uid, tmpdir, sock, out_fd, self.limits)
        dead.close()
        raise RunnerError(f"runner {pid} failed to start: {reason}")

    def _refill_loop(self) -> None:
        backoff = 0.0
        while True:
            with self._cv:
                while not self._closed and (
                    len(self._warm) + self._spawning >= self.warm_size or backoff > 0
                ):
                    if backoff > 0:
                        self._cv.wait(backoff)
                        backoff = 0.0
                    else:
                        self._cv.wait()
                if self._closed:
                    return
                count = self.warm_size - len(self._warm) - self._spawning
                self._spawning += count
            runners: list[Runner] = []
            try:
                runners = self._spawn(count)
            except Exception as exc:
                if not self._closed:
                    log.warning("could not pre-start runners: %s", exc)
                backoff = 0.5
            with self._cv:
                self._spawning -= count
                leftovers: list[Runner] = []
                if self._closed:
                    leftovers = runners
                else:
                    self._warm.extend(runners)
                self._cv.notify_all()
            for runner in leftovers:
                runner.close()
