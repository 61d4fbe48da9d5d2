"""Process sandbox applied to every runner right after it is forked.

Three modes, chosen once by the zygote (see ``docs/runtime.md``):

``full``
    running as root with mount-namespace support: private mount namespace
    (protected paths hidden, ``/root`` covered, ``/proc`` remounted with
    ``hidepid=invisible`` when the kernel supports per-mount options), a unique
    unprivileged uid/gid per runner, ``PR_SET_NO_NEW_PRIVS`` and rlimits.
``uid``
    root but ``unshare(CLONE_NEWNS)`` is not permitted (e.g. a default Docker
    container): unique uid/gid, no-new-privs and rlimits, no mount changes.
``unprivileged``
    not root: only rlimits, ``setsid`` and no-new-privs (weaker mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import resource
import signal
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from flowlink.runtime import cgroups, seccomp

__all__ = [
    "SCRUBBED_ENV",
    "UID_BASE",
    "SandboxInfo",
    "UidAllocator",
    "detect_mode",
    "enter",
    "exposed_python_paths",
    "kill_uid_processes",
    "limit_malloc_arenas",
    "prctl",
    "private_dirs",
    "set_child_subreaper",
    "uid_in_use",
    "uid_processes",
]

log = logging.getLogger(__name__)

#: First uid used for runners; runner uids are ``UID_BASE .. UID_BASE + UID_RANGE - 1``.
UID_BASE = 2_000_000_000
#: How many sandbox uids there are; they are handed out in order (see :class:`UidAllocator`).
UID_RANGE = 2_000_000_000
#: Where root zygotes reserve blocks of runner uids (shared by every worker on the host).
UID_STATE_FILE = "/var/lib/flowlink/runner-uids"
_UID_BLOCK = 1024

#: World-writable directories every runner gets privately (one fresh tmpfs, full mode).
PRIVATE_DIRS = ("/tmp", "/dev/shm", "/var/tmp", "/run/lock")

#: The only environment runners (and the zygote) ever get.
SCRUBBED_ENV: dict[str, str] = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/nonexistent",
}

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
]


def _fail(what: str) -> NoReturn:
    err = ctypes.get_errno()
    raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(value: str | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None
) -> None:
    """mount(2) via libc."""
    # the message is only formatted on failure (a runner's start makes six such calls)
    if _libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data)) != 0:
        _fail(f"mount {target!r}")


def umount_detach(target: str) -> None:
    """umount2(target, MNT_DETACH)."""
    if _libc.umount2(_b(target), MNT_DETACH) != 0:
        _fail(f"umount {target!r}")


def unshare(flags: int) -> None:
    """unshare(2) via libc."""
    if _libc.unshare(flags) != 0:
        _fail("unshare")


def prctl(option: int, arg2: int = 0) -> None:
    """prctl(2) via libc (remaining arguments 0)."""
    if _libc.prctl(option, arg2, 0, 0, 0) != 0:
        _fail(f"prctl({option})")


def set_child_subreaper() -> None:
    """Make orphaned descendants of this process re-parent to it."""
    prctl(PR_SET_CHILD_SUBREAPER, 1)


def limit_malloc_arenas(count: int = 2) -> None:
    """Cap glibc malloc arenas (each reserves 64 MB of address space per thread).

    Keeps threaded scripts from hitting RLIMIT_AS through address-space
    reservations alone. No-op where ``mallopt`` is unavailable.
    """
    mallopt = getattr(_libc, "mallopt", None)
    if mallopt is not None:
        with contextlib.suppress(Exception):
            mallopt(-8, count)  # M_ARENA_MAX


class UidAllocator:
    """Hands out runner uids independently of pids; a uid is never reused while in use.

    Uids come in order from blocks of ``_UID_BLOCK`` reserved in ``state_file`` under an
    exclusive lock, so every zygote on the host (several workers, restarts) gets its own
    block and a uid comes round again only after ``UID_RANGE`` runners. A uid that still has
    a process (``uid_in_use``) is skipped. Without a usable state file the first block starts
    at a random offset.
    """

    def __init__(self, state_file: str = UID_STATE_FILE) -> None:
        self.state_file = state_file
        self._next = 0
        self._end = 0

    def _reserve(self) -> int:
        import fcntl

        try:
            os.makedirs(os.path.dirname(self.state_file), mode=0o700, exist_ok=True)
            fd = os.open(self.state_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.warning("cannot keep runner uid state in %s (%s)", self.state_file, exc)
            return int.from_bytes(os.urandom(4), "big") % UID_RANGE
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            raw = os.pread(fd, 32, 0).strip()
            start = int(raw) % UID_RANGE if raw.isdigit() else 0
            data = str((start + _UID_BLOCK) % UID_RANGE).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            return start
        finally:
            os.close(fd)

    def allocate(self) -> int:
        """The next free runner uid."""
        for _ in range(4 * _UID_BLOCK):
            if self._next >= self._end:
                self._next = self._reserve()
                self._end = self._next + _UID_BLOCK
            uid = UID_BASE + self._next % UID_RANGE
            self._next += 1
            if not uid_in_use(uid):
                return uid
        raise OSError(errno.EAGAIN, "no free runner uid")


def remove_files_of(uid: int, dirs: Sequence[str]) -> int:
    """Remove what ``uid`` left directly in ``dirs`` (the host's ``/tmp``, ``/dev/shm``, ...).

    For sandboxes without private directories (``uid`` mode), once every process of
    ``uid`` is gone. Runs with the effective uid switched to ``uid`` (saved uid root), so it
    can delete nothing that uid could not have deleted itself, whatever links it left.
    Returns the number of entries removed.
    """
    import shutil

    if uid < UID_BASE:
        return 0
    removed = 0
    os.setresuid(uid, uid, 0)
    try:
        if os.getresuid() != (uid, uid, 0):
            return 0
        for directory in dirs:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                try:
                    if entry.stat(follow_symlinks=False).st_uid != uid:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        shutil.rmtree(entry.path)
                    else:
                        os.unlink(entry.path)
                    removed += 1
                except OSError:
                    continue
    finally:
        os.setresuid(0, 0, 0)
    return removed


def private_dirs() -> list[str]:
    """The directories of :data:`PRIVATE_DIRS` that exist here (real paths, no symlinks)."""
    return [path for path in PRIVATE_DIRS if os.path.isdir(path) and os.path.realpath(path) == path]


@dataclass(frozen=True)
class SandboxInfo:
    """What a runner reports once its sandbox is up."""

    uid: int
    tmpdir: str


# --------------------------------------------------------------------------- mode detection


def _kernel_supports_proc_instances() -> bool:
    """hidepid on a fresh procfs mount is per-mount only since Linux 5.8."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


def detect_mode(force_unprivileged: bool = False) -> tuple[str, bool]:
    """Return ``(mode, hide_proc)`` for this process; probes in throw-away children.

    ``full`` needs root with CAP_SYS_ADMIN (mount namespace) and CAP_SETUID/SETGID;
    ``uid`` needs only the latter; otherwise ``unprivileged``.
    """
    if force_unprivileged or os.geteuid() != 0:
        return "unprivileged", False
    if not _probe(_probe_uid_switch):
        log.warning("cannot switch to sandbox uids: runners use the unprivileged sandbox")
        return "unprivileged", False
    if not _probe(_probe_mount_namespace):
        log.warning("no mount namespace support: runners use the uid-only sandbox")
        return "uid", False
    return "full", _kernel_supports_proc_instances() and _probe(_probe_hidden_proc)


def _probe(check: Callable[[], None]) -> bool:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the probe child
        code = 1
        try:
            check()
            code = 0
        except BaseException:
            pass
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def _probe_uid_switch() -> None:
    uid = UID_BASE + UID_RANGE + os.getpid()  # above the runners' range: never a runner's uid
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def _probe_mount_namespace() -> None:
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    if os.path.isdir("/mnt"):
        mount("tmpfs", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, "size=4k")


def _probe_hidden_proc() -> None:
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def exposed_python_paths(cover: str = "/root") -> tuple[list[str], list[tuple[str, str]]]:
    """Directories/files under ``cover`` that the interpreter needs.

    Returns ``(paths, links)``: real paths to bind back into the tmpfs that covers
    ``cover`` (outermost only) and ``(link, target)`` symlinks to recreate.
    """
    candidates: list[str] = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        os.path.dirname(sys.executable),
        *sys.path,
    ]
    try:
        import flowlink

        candidates.append(os.path.dirname(os.path.abspath(flowlink.__file__)))
    except Exception:  # pragma: no cover - flowlink always importable here
        pass
    real: set[str] = set()
    links: list[tuple[str, str]] = []
    for cand in candidates:
        if not cand or not os.path.isabs(cand) or not os.path.exists(cand):
            continue
        absolute = os.path.normpath(cand)
        resolved = os.path.realpath(cand)
        if _under(resolved, cover) and resolved != cover:
            real.add(resolved)
        if absolute != resolved and _under(absolute, cover):
            links.append((absolute, resolved))
    # also the real location of the interpreter binary
    exe = os.path.realpath(sys.executable)
    if _under(exe, cover):
        real.add(os.path.dirname(exe))
    outer: list[str] = []
    for path in sorted(real, key=len):
        if not any(_under(path, kept) for kept in outer):
            outer.append(path)
    return outer, links


def python_paths_under(dirs: Sequence[str]) -> list[str]:
    """The interpreter's directories that lie below ``dirs`` (e.g. a venv below ``/tmp``).

    A runner's private ``/tmp`` would hide them; they are bound back into it.
    """
    kept: list[str] = []
    for path in dirs:
        kept.extend(exposed_python_paths(cover=path)[0])
    return kept


# --------------------------------------------------------------------------- runner sandbox


def _setup_mounts(
    protected: Iterable[str],
    stage_parent: str,
    expose: Sequence[str],
    links: Sequence[tuple[str, str]],
    hide_proc: bool,
) -> None:
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE, None)
    for path in protected:
        if not path:
            continue
        if os.path.isdir(path):
            mount(
                "tmpfs",
                path,
                "tmpfs",
                MS_NOSUID | MS_NODEV | MS_NOEXEC,
                "size=4k,nr_inodes=8,mode=0700",
            )
        elif os.path.exists(path):
            mount("/dev/null", path, None, MS_BIND, None)
    cover = "/root"
    if os.path.isdir(cover):
        stages: list[tuple[str, str]] = []
        for i, path in enumerate(expose):
            stage = os.path.join(stage_parent, f".stage{i}")
            if os.path.isdir(path):
                os.mkdir(stage)
            else:
                os.close(os.open(stage, os.O_CREAT | os.O_WRONLY, 0o600))
            mount(path, stage, None, MS_BIND | MS_REC, None)
            stages.append((path, stage))
        mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=256,mode=0755")
        for path, stage in stages:
            if os.path.isdir(stage):
                os.makedirs(path, mode=0o755, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            mount(stage, path, None, MS_BIND | MS_REC, None)
            umount_detach(stage)
            if os.path.isdir(stage):
                os.rmdir(stage)
            else:
                os.unlink(stage)
        for link, target in links:
            if _under(link, cover) and not os.path.lexists(link):
                os.makedirs(os.path.dirname(link), mode=0o755, exist_ok=True)
                os.symlink(target, link)
        # make the covering tmpfs read-only (bind mounts below keep their own flags)
        mount(None, cover, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755")
    if hide_proc:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=invisible")


def _private_mounts(
    dirs: Sequence[str], stage: str, size_mb: int, keep: Sequence[str] = ()
) -> None:
    """Give this runner its own mount and IPC namespaces with fresh, empty ``dirs``.

    One size-capped tmpfs is mounted on ``stage`` (an empty root-only directory of the
    zygote's namespace); each of ``dirs`` gets a ``1777`` sub-directory of it bind-mounted on
    top, and the stage mount is detached. The tmpfs lives exactly as long as the runner's
    namespace, i.e. until the last process of the execution is gone; the IPC namespace does
    the same for System V shared memory, semaphores and POSIX message queues. ``keep``
    (the interpreter's own directories below ``dirs``, from :func:`python_paths_under`)
    are bound back, read-only, so that a flowlink installed below ``/tmp`` still imports.
    """
    unshare(CLONE_NEWNS | CLONE_NEWIPC)
    # Held open across the covering mounts: the bind source is reached through the fd.
    kept = [(path, os.open(path, os.O_PATH | os.O_CLOEXEC)) for path in keep]
    mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, f"size={max(1, size_mb)}m,mode=0700")
    stage_fd = os.open(stage, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # /tmp last: the stage itself may live below /tmp and be covered afterwards
        for i, path in enumerate(sorted(dirs, key=lambda d: d == "/tmp")):
            sub = os.path.join(stage, f"d{i}")
            os.mkdir(sub)
            os.chmod(sub, 0o1777)
            mount(sub, path, None, MS_BIND, None)
        umount_detach(f"/proc/self/fd/{stage_fd}")
        for path, fd in kept:
            os.makedirs(path, mode=0o755, exist_ok=True)
            source = f"/proc/self/fd/{fd}"
            mount(source, path, None, MS_BIND | MS_REC, None)
            mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
    finally:
        os.close(stage_fd)
        for _, fd in kept:
            os.close(fd)


def enter_shared_namespace(config: dict[str, Any]) -> None:
    """Give the zygote (and so every runner it forks) its private mount namespace.

    Done once per zygote, not per runner: runners inherit the namespace through fork, so a
    runner costs no unshare and no mounts. They see the same filesystem view (store hidden,
    ``/root`` covered, ``/proc`` with ``hidepid``); they are kept apart from each other by
    their own uids and 0700 temp dirs, and without capabilities they cannot change mounts.
    """
    _setup_mounts(
        config.get("protected_paths", ()),
        config["base_dir"],
        config.get("expose", ()),
        [(str(x[0]), str(x[1])) for x in config.get("links", ())],
        bool(config.get("hide_proc")),
    )


def uid_in_use(uid: int) -> bool:
    """True while any process (zombies included) has real uid ``uid``.

    One ``getpriority(PRIO_USER, uid)`` call: the kernel walks its task list, no /proc scan.
    """
    try:
        os.getpriority(os.PRIO_USER, uid)
    except ProcessLookupError:
        return False
    return True


def uid_processes(uid: int) -> list[tuple[int, str]]:
    """``(pid, state)`` of every process whose real uid is ``uid`` (scans /proc)."""
    found: list[tuple[int, str]] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        state = "?"
        for line in data.split(b"\n"):
            if line.startswith(b"State:"):
                parts = line.split()
                state = parts[1].decode() if len(parts) > 1 else "?"
            elif line.startswith(b"Uid:"):
                parts = line.split()
                if len(parts) > 1 and int(parts[1]) == uid:
                    found.append((int(entry), state))
                break
    return found


def count_user_tasks(uid: int) -> int:
    """Threads of all processes of ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for pid, _state in uid_processes(uid):
        try:
            total += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            total += 1
    return total


def kill_uid_processes(uid: int, timeout: float = 2.0) -> bool:
    """SIGKILL every process of ``uid`` from the outside (fallback when no zygote).

    Returns True when none but zombies are left. Refuses uids below ``UID_BASE``.
    """
    import time

    if uid < UID_BASE:
        return False
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid, state in uid_processes(uid) if state != "Z"]
        if not alive:
            return True
        for pid in alive:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)


def _set_limits(limits: dict[str, Any], nproc: int) -> None:
    def both(res: int, value: int, hard: int | None = None) -> None:
        _cur_soft, cur_hard = resource.getrlimit(res)
        hard_value = value if hard is None else hard
        if cur_hard != resource.RLIM_INFINITY and os.geteuid() != 0:
            hard_value = min(hard_value, cur_hard)
            value = min(value, hard_value)
        resource.setrlimit(res, (value, hard_value))

    cpu = int(limits["cpu_seconds"])
    both(resource.RLIMIT_CPU, cpu, cpu + 1)
    both(resource.RLIMIT_AS, int(limits["memory_mb"]) * 1024 * 1024)
    both(resource.RLIMIT_NOFILE, int(limits["open_files"]))
    both(resource.RLIMIT_NPROC, nproc)
    both(resource.RLIMIT_CORE, 0)


def enter(config: dict[str, Any]) -> SandboxInfo:
    """Apply the sandbox to the calling (freshly forked runner) process.

    ``config`` is the zygote configuration (``mode``, ``base_dir``, ``limits``,
    ``protected_paths``, ``expose``, ``links``, ``hide_proc``).
    """
    os.setsid()
    mode = config["mode"]
    limits = config["limits"]
    pid = os.getpid()
    # cheaper than tempfile.mkdtemp (which seeds a new random.Random after fork)
    tmpdir = os.path.join(config["base_dir"], f"flowlink-run-{pid}-{os.urandom(6).hex()}")
    os.mkdir(tmpdir, 0o700)
    if mode == "full" and config.get("private_dirs"):
        _private_mounts(
            config["private_dirs"],
            config["stage_dir"],
            int(limits["memory_mb"]),
            config.get("private_keep", ()),
        )
    if mode in ("full", "uid"):
        uid = int(config["uid"])
        if uid < UID_BASE or uid_in_use(uid):
            raise OSError(errno.EBUSY, f"sandbox uid {uid} is in use")
        os.chown(tmpdir, uid, uid)
        processes = int(limits["processes"])
        if config.get("cgroup"):
            cgroups.enter(
                cgroups.CgroupSetup.from_json(config["cgroup"]),
                str(config["group"]),
                int(limits["memory_mb"]),
                processes,
                bool(config.get("group_fresh")),
            )
            processes *= 2  # the pids group is the limit; RLIMIT_NPROC stays as a backstop
        _set_limits(limits, processes)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
            raise OSError(errno.EPERM, "failed to switch to the sandbox uid")
        # credentials changed: make /proc/self usable again and re-arm parent death
        prctl(PR_SET_DUMPABLE, 1)
    else:
        uid = os.getuid()
        current = config.get("user_tasks")
        if current is None:
            current = count_user_tasks(uid)
        _set_limits(limits, int(current) + int(limits["processes"]))
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if config.get("seccomp"):
        seccomp.install()
    os.umask(0o077)
    os.chdir(tmpdir)
    # the zygote's environment is SCRUBBED_ENV (it sets it when it starts, see zygote.main):
    # only the runner's own directories change
    os.environ["HOME"] = tmpdir
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    return SandboxInfo(uid=uid, tmpdir=tmpdir)
