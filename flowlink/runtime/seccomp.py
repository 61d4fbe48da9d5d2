"""A seccomp filter for runners: system calls a flow script never needs fail with ``EPERM``.

A small classic-BPF program, installed with ``prctl(PR_SET_SECCOMP)`` through ctypes after
``PR_SET_NO_NEW_PRIVS`` (so it works without root, in every sandbox mode) and inherited by every
process the script starts. It blocks:

* new namespaces: ``unshare``, ``setns`` and ``clone`` with any ``CLONE_NEW*`` flag (user
  namespaces above all: they open kernel code paths otherwise reserved to root); ``clone3``
  answers ``ENOSYS`` (its flags are behind a pointer a filter cannot read), so the C library
  falls back to ``clone``, which is checked;
* mounts and the new mount API, ``pivot_root``, ``chroot``;
* looking into or controlling other processes: ``ptrace``, ``process_vm_readv/writev``,
  ``kcmp``, ``pidfd_getfd``;
* kernel surfaces with a history of bugs: ``keyctl``/``add_key``/``request_key``, ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``io_uring_*``, ``open_by_handle_at``;
* host administration: modules, ``kexec``, ``reboot``, swap, ``acct``, quotas, clocks,
  ``syslog``, ``iopl``/``ioperm``, ``vhangup``, ``fanotify_init``.

Calls of another architecture's ABI (x32, i386 on x86-64) kill the process. Supported on x86-64
and aarch64; elsewhere no filter is installed and :func:`supported` says so.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
from typing import Any

__all__ = ["BLOCKED", "install", "probe", "supported"]

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000

_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06

_OFFSET_NR = 0
_OFFSET_ARCH = 4
_OFFSET_ARG0_LOW = 16  # args[0], low 32 bits (little-endian)

#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
CLONE_NEW_ANY |= 0x40000000

#: names of the blocked system calls (besides ``clone`` with namespace flags and ``clone3``)
BLOCKED = [
    "unshare",
    "setns",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_tree",
    "move_mount",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "keyctl",
    "add_key",
    "request_key",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "reboot",
    "swapon",
    "swapoff",
    "acct",
    "quotactl",
    "quotactl_fd",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "syslog",
    "vhangup",
    "fanotify_init",
    "lookup_dcookie",
    "iopl",
    "ioperm",
    "uselib",
    "_sysctl",
]

_X86_64 = {
    "clone": 56, "ptrace": 101, "syslog": 103, "uselib": 134, "vhangup": 153, "pivot_root": 155,
    "_sysctl": 156, "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164,
    "mount": 165, "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248,
    "request_key": 249, "keyctl": 250, "unshare": 272, "perf_event_open": 298,
    "fanotify_init": 300, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311,
    "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
    "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "clone3": 435, "pidfd_getfd": 438, "mount_setattr": 442, "quotactl_fd": 443,
}  # fmt: skip

_AARCH64 = {
    "lookup_dcookie": 18, "umount2": 39, "mount": 40, "pivot_root": 41, "chroot": 51,
    "vhangup": 58, "quotactl": 60, "acct": 89, "unshare": 97, "kexec_load": 104,
    "init_module": 105, "delete_module": 106, "clock_settime": 112, "syslog": 116,
    "ptrace": 117, "reboot": 142, "settimeofday": 170, "adjtimex": 171, "add_key": 217,
    "request_key": 218, "keyctl": 219, "clone": 220, "swapon": 224, "swapoff": 225,
    "perf_event_open": 241, "fanotify_init": 262, "name_to_handle_at": 264,
    "open_by_handle_at": 265, "clock_adjtime": 266, "setns": 268, "process_vm_readv": 270,
    "process_vm_writev": 271, "kcmp": 272, "finit_module": 273, "bpf": 280, "userfaultfd": 282,
    "kexec_file_load": 294, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "open_tree": 428, "move_mount": 429, "fsopen": 430,
    "fsconfig": 431, "fsmount": 432, "fspick": 433, "clone3": 435, "pidfd_getfd": 438,
    "mount_setattr": 442, "quotactl_fd": 443,
}  # fmt: skip

#: machine -> (AUDIT_ARCH value, syscall numbers, lowest number of a foreign ABI or None)
_ARCHES: dict[str, tuple[int, dict[str, int], int | None]] = {
    "x86_64": (0xC000003E, _X86_64, 0x40000000),  # x32 syscalls have bit 30 set
    "aarch64": (0xC00000B7, _AARCH64, None),
}


def supported() -> bool:
    """True where a filter can be built for this machine's architecture."""
    return platform.machine() in _ARCHES


#: at most this many system-call numbers are compared one by one at a leaf of the search tree
_LEAF = 4


def _program() -> list[tuple[int, int, int, int]]:
    """The filter: the architecture check, then a binary search over the blocked numbers.

    A search tree (``jge`` on the middle number, ``jeq`` at the leaves) instead of one ``jeq``
    per blocked call: the kernel evaluates the program once per system-call number when the
    filter is installed (to find the calls it can always allow without running it), so a
    chain of ~60 comparisons made installing cost ~0.1 ms per runner, the tree a third of it.
    """
    arch, numbers, foreign = _ARCHES[platform.machine()]
    targets = {numbers[name]: "EPERM" for name in BLOCKED if name in numbers}
    targets[numbers["clone3"]] = "ENOSYS"
    targets[numbers["clone"]] = "CLONE"
    # layout: checks ..., CLONE (its flags), ALLOW, EPERM, ENOSYS, KILL (jumps are forward and
    # relative); a label of a subtree is the index of its first instruction
    body: list[tuple[str, int, object, object]] = [
        ("ld", _OFFSET_ARCH, None, None),
        ("jeq", arch, None, "KILL"),
        ("ld", _OFFSET_NR, None, None),
    ]
    if foreign is not None:
        body.append(("jge", foreign, "KILL", None))
    labels: dict[str, int] = {}

    def search(nrs: list[int]) -> None:
        if len(nrs) <= _LEAF:
            for i, nr in enumerate(nrs):
                body.append(("jeq", nr, targets[nr], "ALLOW" if i == len(nrs) - 1 else None))
            return
        middle = len(nrs) // 2
        branch = len(body)
        body.append(("jge", nrs[middle], f"upper{branch}", None))
        search(nrs[:middle])
        labels[f"upper{branch}"] = len(body)
        search(nrs[middle:])

    search(sorted(targets))
    labels["CLONE"] = len(body)
    body.append(("ld", _OFFSET_ARG0_LOW, None, None))
    body.append(("jset", CLONE_NEW_ANY, "EPERM", "ALLOW"))
    labels.update(ALLOW=len(body), EPERM=len(body) + 1, ENOSYS=len(body) + 2, KILL=len(body) + 3)
    codes = {"ld": _LD_W_ABS, "jeq": _JEQ_K, "jge": _JGE_K, "jset": _JSET_K}
    program: list[tuple[int, int, int, int]] = []
    for index, (op, k, jt, jf) in enumerate(body):
        true = labels[str(jt)] - index - 1 if jt is not None else 0
        false = labels[str(jf)] - index - 1 if jf is not None else 0
        program.append((codes[op], true, false, k))
    program += [
        (_RET_K, 0, 0, _RET_ALLOW),
        (_RET_K, 0, 0, _RET_ERRNO | 1),  # EPERM
        (_RET_K, 0, 0, _RET_ERRNO | 38),  # ENOSYS
        (_RET_K, 0, 0, _RET_KILL_PROCESS),
    ]
    return program


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


@functools.cache
def _compiled() -> tuple[ctypes.Array[ctypes.c_char], _SockFprog, Any]:
    """The filter in kernel format and libc's prctl (built once, in the zygote)."""
    program = _program()
    raw = b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))
    fprog = _SockFprog(len(program), ctypes.addressof(buffer))
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong]
    return buffer, fprog, prctl


def install() -> bool:
    """Install the filter on the calling thread (and its future children).

    Needs ``PR_SET_NO_NEW_PRIVS`` set before (or CAP_SYS_ADMIN). Returns False on an
    unsupported architecture; raises OSError if the kernel refuses the filter.
    """
    if not supported():
        return False
    _buffer, fprog, prctl = _compiled()
    if prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")
    return True


def probe() -> bool:
    """True if the filter installs and blocks user namespaces here (tried in a child)."""
    if not supported():
        return False
    _compiled()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - probe child
        code = 1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            install()
            if libc.unshare(0x10000000) != 0 and ctypes.get_errno() == 1:  # CLONE_NEWUSER
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0
