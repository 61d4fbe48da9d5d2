"""Control groups: one group per execution limiting memory, processes and CPU time together.

The zygote detects at start what the machine offers (:func:`setup`):

* cgroup v1 with the ``memory`` and ``pids`` controllers (and ``cpuacct`` for CPU time) mounted
  and writable, as on hosts with the hybrid layout;
* cgroup v2 as the main hierarchy (``/sys/fs/cgroup/cgroup.controllers`` lists ``memory`` and
  ``pids``);
* otherwise nothing: runners keep the per-process rlimits only (see docs/runtime.md).

It creates one parent group ``flowlink-<zygote pid>`` below its own group in each hierarchy.
Every runner, still root right after the fork, moves itself into a group ``g<n>`` below it
(:func:`enter`). Groups are reused: making one and writing its memory limit costs about a
millisecond on cgroup v1, moving a process in a fraction of that. A group is handed to a new
runner only once every process of the previous one is gone; its counters are read then, when it
is freed (:func:`counters`; nothing can move them until the next runner enters), and the next
runner's limits compare against that baseline. The zygote watches the live
groups (:func:`exceeded`), kills an execution that went over a limit and reads the final counters
after the sweep.

Memory counts every process of the execution together with its private tmpfs (tmpfs pages are
charged to the group of the process that wrote them). Processes are counted with threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CgroupSetup",
    "Counters",
    "counters",
    "enter",
    "exceeded",
    "over",
    "remove",
    "remove_parents",
    "setup",
]

log = logging.getLogger(__name__)

MEMORY = "memory"
PROCESSES = "processes"
CPU = "cpu"

_V1_CONTROLLERS = ("memory", "pids", "cpuacct")

#: ``(OOM kills, refused forks, CPU seconds)`` of a group
Counters = tuple[int, int, float]


@dataclass
class CgroupSetup:
    """The zygote's parent groups: ``version`` 1 or 2 and one directory per hierarchy."""

    version: int
    parents: dict[str, str] = field(default_factory=dict)  # controller (v1) or "unified" -> dir

    def to_json(self) -> dict[str, Any]:
        """Plain dict for the runner configuration."""
        return {"version": self.version, "parents": dict(self.parents)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CgroupSetup:
        """Inverse of :meth:`to_json`."""
        return cls(int(data["version"]), {str(k): str(v) for k, v in data["parents"].items()})

    @property
    def name(self) -> str:
        """``cgroup-v1`` or ``cgroup-v2``."""
        return f"cgroup-v{self.version}"

    def dirs(self, group: str) -> dict[str, str]:
        """The directories of the runner group ``group``, by controller."""
        return {key: os.path.join(parent, group) for key, parent in self.parents.items()}


# --------------------------------------------------------------------------- small file helpers


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _read(path: str) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return os.read(fd, 8192).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def _field(text: str, key: str) -> int:
    """Value of ``key N`` in a flat-keyed cgroup file (0 if absent)."""
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key and parts[1].isdigit():
            return int(parts[1])
    return 0


# --------------------------------------------------------------------------- detection


def _lines(path: str) -> list[str]:
    """Lines of a whole (proc) file; none if it cannot be read."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().splitlines()
    except OSError:
        return []


def _mounts() -> list[tuple[str, str, str, set[str]]]:
    """``(mount point, root, fstype, super options)`` of every cgroup mount of this process."""
    found: list[tuple[str, str, str, set[str]]] = []
    for line in _lines("/proc/self/mountinfo"):
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        fields = head.split()
        rest = tail.split()
        if len(fields) < 5 or len(rest) < 3 or rest[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((fields[4], fields[3], rest[0], set(rest[2].split(","))))
    return found


def _own_groups() -> dict[str, str]:
    """This process's group path per v1 controller, and ``""`` -> its v2 path."""
    groups: dict[str, str] = {}
    for line in _lines("/proc/self/cgroup"):
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            groups[controller] = parts[2]
    return groups


def _join(mountpoint: str, root: str, path: str) -> str:
    if root != "/" and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return os.path.join(mountpoint, path.lstrip("/"))


def _v1_dirs() -> dict[str, str]:
    own = _own_groups()
    dirs: dict[str, str] = {}
    for mountpoint, root, fstype, options in _mounts():
        if fstype != "cgroup":
            continue
        for controller in _V1_CONTROLLERS:
            if controller in options and controller in own and controller not in dirs:
                dirs[controller] = _join(mountpoint, root, own[controller])
    return dirs


def _v2_dir() -> str | None:
    own = _own_groups()
    if "" not in own:
        return None
    for mountpoint, root, fstype, _options in _mounts():
        if fstype == "cgroup2":
            path = _join(mountpoint, root, own[""])
            controllers = _read(os.path.join(path, "cgroup.controllers")).split()
            if "memory" in controllers and "pids" in controllers:
                return path
    return None


def _remove_stale(parent_of: str) -> None:
    """Remove ``flowlink-<pid>`` groups of zygotes that are gone (their runners are gone too)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(parent_of):
            if not name.startswith("flowlink-") or not name[9:].isdigit():
                continue
            if os.path.exists(f"/proc/{name[9:]}"):
                continue
            _remove_tree(os.path.join(parent_of, name))


def _setup_v1(tag: str) -> CgroupSetup:
    dirs = _v1_dirs()
    missing = [c for c in ("memory", "pids") if c not in dirs]
    if missing:
        raise OSError(errno.ENOENT, f"cgroup v1 controller(s) not mounted: {', '.join(missing)}")
    parents: dict[str, str] = {}
    try:
        for controller, own in dirs.items():
            _remove_stale(own)
            parent = os.path.join(own, f"flowlink-{tag}")
            os.mkdir(parent, 0o755)
            parents[controller] = parent
            if controller == "memory":
                with contextlib.suppress(OSError):
                    _write(os.path.join(parent, "memory.use_hierarchy"), "1")
    except OSError:
        remove_parents(CgroupSetup(1, parents))
        raise
    return CgroupSetup(1, parents)


def _setup_v2(tag: str) -> CgroupSetup:
    own = _v2_dir()
    if own is None:
        raise OSError(errno.ENOENT, "no cgroup v2 hierarchy with the memory and pids controllers")
    _remove_stale(own)
    control = os.path.join(own, "cgroup.subtree_control")
    try:
        _write(control, "+memory +pids")
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise
        # "no internal processes": move this group's processes into a leaf, then delegate
        leaf = os.path.join(own, "flowlink-server")
        with contextlib.suppress(FileExistsError):
            os.mkdir(leaf, 0o755)
        for pid in _read(os.path.join(own, "cgroup.procs")).split():
            with contextlib.suppress(OSError):
                _write(os.path.join(leaf, "cgroup.procs"), pid)
        _write(control, "+memory +pids")
    parent = os.path.join(own, f"flowlink-{tag}")
    os.mkdir(parent, 0o755)
    try:
        _write(os.path.join(parent, "cgroup.subtree_control"), "+memory +pids")
    except OSError:
        remove_parents(CgroupSetup(2, {"unified": parent}))
        raise
    return CgroupSetup(2, {"unified": parent})


def setup(tag: str) -> tuple[CgroupSetup | None, str]:
    """Create the parent groups of this zygote; returns ``(setup, why not)``.

    Tries cgroup v1 (memory + pids) first when it is mounted, then v2. ``setup`` is None when
    neither can be used (not root, read-only ``/sys/fs/cgroup``, controllers missing); the
    reason is then the second item.
    """
    if os.geteuid() != 0:
        return None, "not running as root"
    reasons: list[str] = []
    for version, make in ((1, _setup_v1), (2, _setup_v2)):
        try:
            return make(tag), ""
        except OSError as exc:
            reasons.append(f"v{version}: {exc.strerror or exc}")
    return None, "; ".join(reasons)


def remove_parents(cg: CgroupSetup) -> None:
    """Remove the zygote's parent groups (and any runner group left in them)."""
    for parent in cg.parents.values():
        _remove_tree(parent)


def _remove_tree(group: str) -> None:
    """rmdir a parent group's (empty) child groups, then the group itself."""
    with contextlib.suppress(OSError):
        for child in os.listdir(group):
            if os.path.isdir(os.path.join(group, child)):
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join(group, child))
        os.rmdir(group)


# --------------------------------------------------------------------------- per runner


def enter(cg: CgroupSetup, group: str, memory_mb: int, processes: int, fresh: bool) -> None:
    """Move the calling process into the runner group ``group`` (creating it when ``fresh``).

    Called by the runner itself (still root) right after the fork. A reused group keeps the
    limits written when it was made (every runner of a zygote has the same limits).
    """
    dirs = cg.dirs(group)
    if fresh or not os.path.isdir(next(iter(dirs.values()))):
        _create(cg, dirs, str(int(memory_mb) * 1024 * 1024), processes)
    for path in dirs.values():
        _write(os.path.join(path, "cgroup.procs"), "0")


def _create(cg: CgroupSetup, dirs: dict[str, str], memory: str, processes: int) -> None:
    for path in dirs.values():
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
    if cg.version == 1:
        mem = dirs["memory"]
        _write(os.path.join(mem, "memory.limit_in_bytes"), memory)
        with contextlib.suppress(FileNotFoundError):  # swap accounting may be off
            _write(os.path.join(mem, "memory.memsw.limit_in_bytes"), memory)
        _write(os.path.join(dirs["pids"], "pids.max"), str(processes))
    else:
        unified = dirs["unified"]
        _write(os.path.join(unified, "memory.max"), memory)
        with contextlib.suppress(FileNotFoundError):
            _write(os.path.join(unified, "memory.swap.max"), "0")
        with contextlib.suppress(FileNotFoundError):
            _write(os.path.join(unified, "memory.oom.group"), "1")
        _write(os.path.join(unified, "pids.max"), str(processes))


def cpu_seconds_used(cg: CgroupSetup, group: str) -> float:
    """CPU time (user + system) used by the group so far, in seconds (0 if unknown)."""
    dirs = cg.dirs(group)
    if cg.version == 1:
        if "cpuacct" not in dirs:
            return 0.0
        raw = _read(os.path.join(dirs["cpuacct"], "cpuacct.usage")).strip()
        return int(raw) / 1e9 if raw.isdigit() else 0.0
    return _field(_read(os.path.join(dirs["unified"], "cpu.stat")), "usage_usec") / 1e6


def counters(cg: CgroupSetup, group: str) -> Counters:
    """The group's counters now (zeros for a group that does not exist yet)."""
    dirs = cg.dirs(group)
    if cg.version == 1:
        memory_events = _read(os.path.join(dirs["memory"], "memory.oom_control"))
        pids_events = _read(os.path.join(dirs["pids"], "pids.events"))
    else:
        memory_events = _read(os.path.join(dirs["unified"], "memory.events"))
        pids_events = _read(os.path.join(dirs["unified"], "pids.events"))
    return (
        _field(memory_events, "oom_kill"),
        _field(pids_events, "max"),
        cpu_seconds_used(cg, group),
    )


def exceeded(
    cg: CgroupSetup, group: str, cpu_limit: float, baseline: Counters = (0, 0, 0.0)
) -> str | None:
    """Which limit the group went over since ``baseline``: ``memory``, ``processes``, ``cpu``
    or None."""
    return over(counters(cg, group), cpu_limit, baseline)


def over(now: Counters, cpu_limit: float, baseline: Counters = (0, 0, 0.0)) -> str | None:
    """Which limit counters ``now`` show went over since ``baseline`` (see :func:`exceeded`)."""
    oom_kills, refused_forks, cpu = now
    if oom_kills > baseline[0]:
        return MEMORY
    if refused_forks > baseline[1]:
        return PROCESSES
    if cpu_limit > 0 and cpu - baseline[2] > cpu_limit:
        return CPU
    return None


def remove(cg: CgroupSetup, group: str) -> None:
    """Remove the runner group (once none of its processes is left)."""
    for path in cg.dirs(group).values():
        with contextlib.suppress(OSError):
            os.rmdir(path)
