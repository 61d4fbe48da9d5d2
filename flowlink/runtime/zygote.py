"""Fork server: ``python -I -m flowlink.runtime.zygote <fd>``.

Started by :class:`flowlink.runtime.pool.RunnerPool` with a scrubbed
environment. Pre-imports the runtime and common stdlib modules once, becomes
child subreaper and serves commands over a ``SOCK_SEQPACKET`` socket (one JSON
object per packet):

pool -> zygote
    ``{"op":"init","config":{...}}`` (first message),
    ``{"op":"fork","rid":n}`` + two fds via SCM_RIGHTS (runner socket, output pipe),
    ``{"op":"kill","pid":n}``, ``{"op":"watch","pid":n}`` (the runner starts its execution:
    watch its control group), ``{"op":"shutdown"}``.
zygote -> pool
    ``{"op":"hello","pid":..,"mode":..,"hide_proc":..}``,
    ``{"op":"forked","rid":n,"pid":p,"uid":u[,"group":g,"baseline":[...]]}`` (control groups:
    the runner's group and its counters at hand-over, so that the pool can read what the
    execution used when it ends) / ``{"op":"fork_failed","rid":n,"message":..}``,
    ``{"op":"exited","pid":p,"returncode":rc|null,"signal":sig|null[,"limit":name]}``
    (``limit``: ``memory``, ``processes`` or ``cpu`` when the runner's control group went
    over that limit; the zygote kills such a runner at once).

``exited`` is only sent once the runner is reaped *and* (root modes) every
process of its sandbox uid has been killed ("swept"). When the reaped runner was the
last process of its uid (one ``getpriority`` call tells), there is nothing to sweep and
``exited`` goes out at once. Otherwise sweeping is done by a
small helper process forked at start-up (the "sweeper"), which switches to
``ruid=euid=<runner uid>, suid=0``, calls ``kill(-1, SIGKILL)`` and switches
back; if a sandboxed process manages to kill the sweeper in that window the
zygote simply starts a new one and repeats the sweep.
"""

from __future__ import annotations

import _signal  # the C functions behind ``signal``: no enum conversions in a fresh runner

# Pre-imported for every runner (fork shares them copy-on-write).
import base64  # noqa: F401
import collections  # noqa: F401
import contextlib
import copy  # noqa: F401
import csv  # noqa: F401
import dataclasses  # noqa: F401
import datetime  # noqa: F401
import decimal  # noqa: F401
import enum  # noqa: F401
import functools  # noqa: F401
import gc
import hashlib  # noqa: F401
import itertools
import json
import logging  # noqa: F401
import math  # noqa: F401
import mmap  # noqa: F401
import os
import random  # noqa: F401
import re  # noqa: F401
import select
import signal
import socket
import string  # noqa: F401
import sys
import textwrap  # noqa: F401
import time
import traceback
import typing  # noqa: F401
import urllib.parse  # noqa: F401
import uuid  # noqa: F401
from collections.abc import Callable
from typing import Any, NoReturn

from flowlink.runtime import cgroups, flow_api, runner, sandbox, seccomp

_MAX_PACKET = 1 << 20
#: how often the zygote looks at the control groups of live runners (seconds)
_CHECK_INTERVAL = 0.1
#: control groups kept for reuse
_MAX_FREE_GROUPS = 64
#: signals the zygote handles; a forked child puts them back to their defaults
_HANDLED_SIGNALS = (int(signal.SIGCHLD), int(signal.SIGINT), int(signal.SIGTERM))


_encode = json.JSONEncoder(separators=(",", ":")).encode


def _send(ctl: socket.socket, message: dict[str, Any]) -> None:
    ctl.send(_encode(message).encode())


class _Sweeper:
    """Helper process that kills every process of a sandbox uid."""

    def __init__(self) -> None:
        self.pid = 0
        self.to_fd = -1
        self.from_fd = -1

    def start(self, child_cleanup: Callable[[], None], leftover_dirs: list[str]) -> None:
        """Fork the sweeper (``child_cleanup`` drops zygote resources in the child).

        ``leftover_dirs``: shared directories where a swept uid's files are removed too
        (when runners have no private ones)."""
        req_r, req_w = os.pipe()
        ack_r, ack_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - sweeper process
            try:
                child_cleanup()
                os.close(req_w)
                os.close(ack_r)
                _sweeper_main(req_r, ack_w, leftover_dirs)
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(ack_w)
        self.pid = pid
        self.to_fd = req_w
        self.from_fd = ack_r

    def close(self) -> None:
        """Close the pipes and kill the sweeper."""
        for fd in (self.to_fd, self.from_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.to_fd = self.from_fd = -1
        if self.pid:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
            self.pid = 0


def _read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return b""
        data += chunk
    return data


def _kill_all_of(uid: int) -> None:
    """``kill(-1, SIGKILL)`` as ``uid``: signals every process of that uid (and nothing else)."""
    os.setresuid(uid, uid, 0)
    try:
        if os.getresuid() == (uid, uid, 0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
    finally:
        os.setresuid(0, 0, 0)


def _sweeper_main(
    req_fd: int, ack_fd: int, leftover_dirs: list[str]
) -> NoReturn:  # pragma: no cover - sweeper process
    while True:
        data = _read_exact(req_fd, 4)
        if not data:
            os._exit(0)
        uid = int.from_bytes(data, "big")
        if uid >= sandbox.UID_BASE:
            # Repeat until nothing of the uid is left: killed processes need a moment to
            # finish exiting, zombies are reaped by the zygote (their subreaper).
            give_up = time.monotonic() + 5.0
            while sandbox.uid_in_use(uid) and time.monotonic() < give_up:
                _kill_all_of(uid)
                if sandbox.uid_in_use(uid):
                    time.sleep(0.0005)
            if leftover_dirs and not sandbox.uid_in_use(uid):
                sandbox.remove_files_of(uid, leftover_dirs)
            if os.getresuid() != (0, 0, 0):
                os._exit(1)
        os.write(ack_fd, data)


class Zygote:
    """The fork-server loop."""

    def __init__(self, ctl: socket.socket, config: dict[str, Any]) -> None:
        self.ctl = ctl
        self.config = config
        self.root = config["mode"] in ("full", "uid")
        self.runners: dict[int, int] = {}  # live runner pid -> uid
        self.pending_sweeps: dict[int, list[dict[str, Any]]] = {}  # uid -> messages to send after
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poll = select.epoll()
        self.polled: dict[int, str] = {}  # fd -> what it is ("ctl", "wake", "sweeper")
        self.sweeper = _Sweeper()
        self.uids = sandbox.UidAllocator(config.get("uid_state_file") or sandbox.UID_STATE_FILE)
        cg = config.get("cgroup")
        self.cg = cgroups.CgroupSetup.from_json(cg) if cg else None
        self.cpu_limit = float(config["limits"]["cpu_seconds"])
        self.hits: dict[int, str] = {}  # uid -> limit it went over
        # control groups: uid -> (group, counters when handed over); groups free for reuse,
        # with their counters when the last process of their previous runner was gone
        self.groups: dict[int, tuple[str, cgroups.Counters]] = {}
        self.free_groups: list[tuple[str, cgroups.Counters]] = []
        self.group_names = itertools.count(1)
        self.next_check = 0.0
        self.watched: set[int] = set()  # runners running an execution (warm ones use nothing)
        self.shutting_down = False
        self.handlers: tuple[Any, ...] = ()  # kept alive: see _child_cleanup

    # ---------------------------------------------------------------- setup

    def _child_cleanup(self) -> None:
        """In a freshly forked child: drop every zygote resource.

        C calls only, and nothing freed: every Python object a fresh child touches (a
        function run for the first time, an object freed) costs it a copy of the page that
        holds it, since the zygote's memory is shared copy-on-write. (``signal.signal`` turns
        the old handler into an enum, which fails for a function and raises an exception;
        ``selectors``' ``close`` frees its keys: the two cost a runner 0.15 ms.) The handlers
        replaced stay alive in the zygote's ``handlers``.
        """
        signal.set_wakeup_fd(-1)
        for signum in _HANDLED_SIGNALS:
            _signal.signal(signum, _signal.SIG_DFL)
        fds = [self.wake_r, self.wake_w, self.sweeper.to_fd, self.sweeper.from_fd]
        if self.ctl.fileno() >= 0:
            fds.append(self.ctl.detach())
        self.poll.close()
        for fd in fds:
            if fd >= 0:
                try:  # noqa: SIM105 - suppress() would run Python code for the first time here
                    os.close(fd)
                except OSError:
                    pass

    def _start_sweeper(self) -> None:
        if not self.root:
            return
        if self.sweeper.from_fd >= 0:
            self._unwatch(self.sweeper.from_fd)
        self.sweeper.close()
        self.sweeper.start(self._child_cleanup, list(self.config.get("leftover_dirs") or ()))
        self._watch_fd(self.sweeper.from_fd, "sweeper")
        for uid in self.pending_sweeps:
            self._request_sweep(uid)

    def _request_sweep(self, uid: int) -> None:
        # if the sweeper died it is restarted on SIGCHLD, which re-sends pending sweeps
        with contextlib.suppress(OSError):
            os.write(self.sweeper.to_fd, uid.to_bytes(4, "big"))

    def sweep(self, uid: int, then: dict[str, Any] | None = None) -> None:
        """Kill every process of ``uid``; send ``then`` to the pool afterwards."""
        first = uid not in self.pending_sweeps
        waiting = self.pending_sweeps.setdefault(uid, [])
        if then is not None:
            waiting.append(then)
        if first:
            self._request_sweep(uid)

    def _on_sigchld(self, *_: object) -> None:
        """SIGCHLD only wakes the loop (through the wake-up fd); it reaps after each wake-up."""

    def _watch_fd(self, fd: int, what: str) -> None:
        self.poll.register(fd, select.EPOLLIN)
        self.polled[fd] = what

    def _unwatch(self, fd: int) -> None:
        if self.polled.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self.poll.unregister(fd)

    # ---------------------------------------------------------------- loop

    def serve(self) -> None:
        """Serve commands until shut down and every runner is gone."""
        self.handlers = (self._on_sigchld, signal.getsignal(signal.SIGTERM))
        signal.signal(signal.SIGCHLD, self.handlers[0])
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        self._watch_fd(self.ctl.fileno(), "ctl")
        self._watch_fd(self.wake_r, "wake")
        self._start_sweeper()
        gc.freeze()
        while True:
            watch = self.cg is not None and bool(self.watched)
            for fd, _events in self.poll.poll(_CHECK_INTERVAL if watch else 1.0):
                what = self.polled.get(fd)
                if what == "ctl":
                    self._on_ctl()
                elif what == "wake":
                    # one read, no BlockingIOError raised at the end of a drain loop each
                    # time: what is left (rarely) wakes the level-triggered poll again
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                elif what == "sweeper":
                    self._on_sweeper()
            self._reap()
            if watch and time.monotonic() >= self.next_check:
                self._check_limits()
            if self.shutting_down and not self.runners and not self.pending_sweeps:
                return

    def _check_limits(self) -> None:
        """End every execution that went over a limit of its control group."""
        assert self.cg is not None
        self.next_check = time.monotonic() + _CHECK_INTERVAL
        for pid in list(self.watched):
            uid = self.runners.get(pid)
            if uid is None:
                self.watched.discard(pid)
                continue
            if uid in self.hits or uid not in self.groups:
                continue
            group, baseline = self.groups[uid]
            hit = cgroups.exceeded(self.cg, group, self.cpu_limit, baseline)
            if hit is not None:
                self.hits[uid] = hit
                self._kill(pid)

    def _on_ctl(self) -> None:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.ctl, 65536, 4)
        except OSError:
            data, fds = b"", []
        if not data:
            for fd in fds:
                os.close(fd)
            self._shutdown()
            return
        try:
            msg = json.loads(data)
        except ValueError:
            msg = {}
        op = msg.get("op")
        if op == "fork":
            self._fork(msg, fds)
            return
        for fd in fds:
            os.close(fd)
        if op == "kill":
            self._kill(int(msg.get("pid") or 0))
        elif op == "watch":
            pid = int(msg.get("pid") or 0)
            if pid in self.runners:
                self.watched.add(pid)
        elif op == "shutdown":
            self._shutdown()

    def _shutdown(self) -> None:
        if self.shutting_down:
            return
        self.shutting_down = True
        self._unwatch(self.ctl.fileno())
        for pid in list(self.runners):
            self._kill(pid)

    def _kill(self, pid: int) -> None:
        uid = self.runners.get(pid)
        if uid is None:
            return  # already reaped: its "exited" message was sent or is pending
        for killer in (os.kill, os.killpg):
            with contextlib.suppress(OSError):
                killer(pid, signal.SIGKILL)
        if self.root:
            self.sweep(uid)

    def _fork(self, msg: dict[str, Any], fds: list[int]) -> None:
        rid = msg.get("rid")
        if len(fds) != 2 or self.shutting_down:
            for fd in fds:
                os.close(fd)
            self._reply({"op": "fork_failed", "rid": rid, "message": "bad fork request"})
            return
        chan_fd, out_fd = fds
        uid = os.getuid()
        try:
            if self.root:
                uid = self.config["uid"] = self.uids.allocate()
                if self.cg is not None:
                    self._assign_group(uid)
            else:
                self._refresh_user_tasks()
            pid = os.fork()
        except OSError as exc:
            os.close(chan_fd)
            os.close(out_fd)
            if uid in self.groups:
                self.free_groups.append(self.groups.pop(uid))
            self._reply({"op": "fork_failed", "rid": rid, "message": f"fork failed: {exc}"})
            return
        if pid == 0:  # pragma: no cover - runner process
            try:
                self._child_cleanup()
                runner.runner_main(chan_fd, out_fd, self.config)
            finally:
                os._exit(runner.EXIT_SANDBOX_FAILED)
        os.close(chan_fd)
        os.close(out_fd)
        self.runners[pid] = uid
        forked: dict[str, Any] = {"op": "forked", "rid": rid, "pid": pid, "uid": uid}
        if uid in self.groups:
            forked["group"], forked["baseline"] = self.groups[uid]
        self._reply(forked)

    def _assign_group(self, uid: int) -> None:
        """Pick the control group of the next runner: a free one, else a new one.

        A free group's baseline is its counters read when it was freed: it has had no process
        since, so they cannot have moved.
        """
        assert self.cg is not None
        fresh = not self.free_groups
        group, baseline = (
            (f"g{next(self.group_names)}", (0, 0, 0.0)) if fresh else self.free_groups.pop()
        )
        self.config["group"] = group
        self.config["group_fresh"] = fresh
        self.groups[uid] = (group, baseline)

    def _release_group(self, uid: int) -> str | None:
        """After the sweep: the limit the runner's group went over, and free the group."""
        assert self.cg is not None
        group, baseline = self.groups.pop(uid, ("", (0, 0, 0.0)))
        if not group:
            return None
        final = cgroups.counters(self.cg, group)
        hit = cgroups.over(final, self.cpu_limit, baseline)
        if len(self.free_groups) < _MAX_FREE_GROUPS:
            self.free_groups.append((group, final))
        else:
            cgroups.remove(self.cg, group)
        return hit

    def _refresh_user_tasks(self) -> None:
        """Count this user's tasks for the runners' process limit, at most once a second.

        Without root the limit counts every process of the user, so a runner's budget is
        "what the user runs now + the limit". Counting scans /proc; once per fork that was
        most of a runner's cost, and a second-old count is exact enough for a budget.
        """
        now = time.monotonic()
        if now - self.config.get("user_tasks_at", -10.0) >= 1.0:
            self.config["user_tasks"] = sandbox.count_user_tasks(os.getuid())
            self.config["user_tasks_at"] = now

    def _reply(self, message: dict[str, Any]) -> None:
        if self.shutting_down and message.get("op") != "exited":
            return
        with contextlib.suppress(OSError):
            _send(self.ctl, message)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.sweeper.pid:
                self.sweeper.pid = 0
                if not (self.shutting_down and not self.pending_sweeps):
                    self._start_sweeper()
                continue
            uid = self.runners.pop(pid, None)
            self.watched.discard(pid)
            if uid is None:
                continue  # an orphan of some runner, or the mode probe
            rc: int | None = None
            sig: int | None = None
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
            else:
                rc = os.waitstatus_to_exitcode(status)
            exited = {"op": "exited", "pid": pid, "returncode": rc, "signal": sig}
            if self.root and self._nothing_left(uid):
                self._swept(uid, [exited])
            elif self.root:
                self.sweep(uid, exited)
            else:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                self._reply(exited)

    def _on_sweeper(self) -> None:
        try:
            data = os.read(self.sweeper.from_fd, 4096)
        except OSError:
            data = b""
        if not data:
            self._unwatch(self.sweeper.from_fd)
            return  # restarted when reaped
        for i in range(0, len(data) - len(data) % 4, 4):
            uid = int.from_bytes(data[i : i + 4], "big")
            messages = self.pending_sweeps.pop(uid, [])
            if not messages:
                continue  # a sweep on kill: the runner's "exited" sweep follows
            self._swept(uid, messages)

    def _nothing_left(self, uid: int) -> bool:
        """After the runner's reap: no process of its uid is left (zombies included) and no
        sweep of it is pending, so the sweeper's round trip can be skipped.

        Only the zygote can give a process that uid, so none can appear later. Not where the
        sweeper also removes the uid's files from shared directories (no private ones).
        """
        if uid in self.pending_sweeps or self.config.get("leftover_dirs"):
            return False
        return not sandbox.uid_in_use(uid)

    def _swept(self, uid: int, messages: list[dict[str, Any]]) -> None:
        """Nothing of ``uid`` is left: free its control group and tell the pool."""
        hit = self.hits.pop(uid, None)
        if self.cg is not None:
            # the runner is reaped and nothing of its uid is left: final counters, and
            # the group is free for the next runner
            final = self._release_group(uid)
            hit = hit or final
        for message in messages:
            if hit is not None:
                message["limit"] = hit
            self._reply(message)


def main(argv: list[str] | None = None) -> None:
    """Zygote entry point."""
    args = sys.argv[1:] if argv is None else argv
    ctl = socket.socket(fileno=int(args[0]))
    ctl.setblocking(True)
    os.set_inheritable(ctl.fileno(), False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # the environment of every runner (each adds its own HOME and TMPDIR)
    os.environ.clear()
    os.environ.update(sandbox.SCRUBBED_ENV)
    try:
        init = json.loads(ctl.recv(_MAX_PACKET))
        config = dict(init["config"])
        mode, hide_proc = sandbox.detect_mode(bool(config.get("force_unprivileged")))
        config["mode"] = mode
        config["hide_proc"] = hide_proc
        if mode == "full":
            expose, links = sandbox.exposed_python_paths()
            config["expose"] = expose
            config["links"] = links
            sandbox.enter_shared_namespace(config)
            config["private_dirs"] = sandbox.private_dirs()
            config["private_keep"] = sandbox.python_paths_under(config["private_dirs"])
            config["stage_dir"] = os.path.join(config["base_dir"], f".stage-{os.getpid()}")
            os.mkdir(config["stage_dir"], 0o700)
        elif mode == "uid":
            # no private directories: what a runner leaves in the shared ones goes after it
            config["leftover_dirs"] = sandbox.private_dirs()
        cg: cgroups.CgroupSetup | None = None
        why = "cgroups disabled by configuration"
        if mode in ("full", "uid") and config.get("cgroups", True):
            cg, why = cgroups.setup(str(os.getpid()))
        elif mode == "unprivileged":
            why = "the unprivileged sandbox cannot create control groups"
        config["cgroup"] = cg.to_json() if cg else None
        config["seccomp"] = seccomp.probe()
        sys.modules["flow_api"] = flow_api
        sandbox.set_child_subreaper()
        sandbox.limit_malloc_arenas()
        _send(
            ctl,
            {
                "op": "hello",
                "pid": os.getpid(),
                "mode": mode,
                "hide_proc": hide_proc,
                "limits": cg.name if cg else "rlimit",
                "limits_note": "" if cg else why,
                "private_tmp": bool(config.get("private_dirs")),
                "seccomp": config["seccomp"],
                "cgroup": config["cgroup"],
            },
        )
    except BaseException as exc:
        try:
            _send(
                ctl,
                {"op": "error", "message": "".join(traceback.format_exception_only(exc)).strip()},
            )
        finally:
            os._exit(2)
    try:
        Zygote(ctl, config).serve()
    finally:
        if cg is not None:
            cgroups.remove_parents(cg)
    os._exit(0)


if __name__ == "__main__":
    main()
