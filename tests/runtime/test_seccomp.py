"""User namespaces and other system calls a flow script never needs are blocked."""

from __future__ import annotations

import pytest

from flowlink.runtime import seccomp
from flowlink.runtime.pool import RunnerPool

from .conftest import PoolFactory, run_script

pytestmark = pytest.mark.skipif(
    not seccomp.supported(), reason="the filter is built for x86-64 and aarch64 only"
)

PROBE = """
import ctypes, os, platform, subprocess, threading, time

libc = ctypes.CDLL(None, use_errno=True)
X86 = platform.machine() == 'x86_64'
NR = {
    'clone': 56 if X86 else 220, 'clone3': 435, 'keyctl': 250 if X86 else 219,
    'bpf': 321 if X86 else 280, 'io_uring_setup': 425, 'perf_event_open': 298 if X86 else 241,
}

def errno_of(result):
    return 0 if result >= 0 else ctypes.get_errno()

def handler(system, this):
    out = {}
    out['unshare_user'] = errno_of(libc.unshare(0x10000000))  # CLONE_NEWUSER
    out['unshare_net'] = errno_of(libc.unshare(0x40000000))
    # clone with CLONE_NEWUSER | SIGCHLD; a child (if any) leaves at once
    pid = libc.syscall(NR['clone'], 0x10000000 | 17, 0, 0, 0, 0)
    if pid == 0:
        libc._exit(0)
    out['clone_user'] = errno_of(pid)
    if pid > 0:
        os.waitpid(pid, 0)
    out['clone3'] = errno_of(libc.syscall(NR['clone3'], 0, 0))
    out['mount'] = errno_of(libc.mount(b'tmpfs', b'/tmp', b'tmpfs', 0, None))
    # ptrace of another process, even our own child of the same uid
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    out['ptrace'] = errno_of(libc.ptrace(16, child, 0, 0))  # PTRACE_ATTACH
    os.kill(child, 9)
    os.waitpid(child, 0)
    out['keyctl'] = errno_of(libc.syscall(NR['keyctl'], 0, -3, 0))  # get session keyring
    out['bpf'] = errno_of(libc.syscall(NR['bpf'], 5, 0, 0))  # BPF_PROG_LOAD
    out['io_uring'] = errno_of(libc.syscall(NR['io_uring_setup'], 1, 0))
    # what scripts do keeps working
    box = []
    t = threading.Thread(target=box.append, args=(1,))
    t.start()
    t.join()
    out['thread'] = box
    out['subprocess'] = subprocess.run(['echo', 'hi'], capture_output=True, text=True).stdout
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    out['fork'] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return this.success('probed', **out)
"""

EPERM, ENOSYS = 1, 38


def _check(pool: RunnerPool) -> None:
    run = run_script(pool, PROBE)
    assert run.outcome.status == "success", run.outcome
    out = run.outcome.outputs
    for name in (
        "unshare_user",
        "unshare_net",
        "clone_user",
        "mount",
        "ptrace",
        "keyctl",
        "bpf",
        "io_uring",
    ):
        assert out[name] == EPERM, (name, out)
    assert out["clone3"] == ENOSYS
    assert out["thread"] == [1]
    assert out["subprocess"] == "hi\n"
    assert out["fork"] == 7


def test_blocked_in_the_pool(pool: RunnerPool) -> None:
    assert pool.sandbox_info()["seccomp"] is True
    _check(pool)


def test_blocked_in_the_unprivileged_sandbox(fresh_pool_factory: PoolFactory) -> None:
    weak = fresh_pool_factory(force_unprivileged=True)
    assert weak.sandbox_info()["seccomp"] is True
    _check(weak)


def test_filter_program_is_well_formed() -> None:
    program = seccomp._program()
    assert len(program) < 100
    for index, (code, jt, jf, _k) in enumerate(program):
        if code != 0x06:  # not a return: both branches land inside the program
            assert index + 1 + max(jt, jf) < len(program)
    assert program[-4:] == [
        (0x06, 0, 0, 0x7FFF0000),
        (0x06, 0, 0, 0x00050001),
        (0x06, 0, 0, 0x00050026),
        (0x06, 0, 0, 0x80000000),
    ]


def _verdict(program: list[tuple[int, int, int, int]], arch: int, nr: int, arg0: int = 0) -> int:
    """What the classic-BPF ``program`` returns for a system call (a small interpreter of the
    instructions the filter uses)."""
    data = {0: nr & 0xFFFFFFFF, 4: arch, 16: arg0 & 0xFFFFFFFF}
    acc = 0
    pc = 0
    while True:
        code, jt, jf, k = program[pc]
        if code == 0x06:  # ret k
            return k
        if code == 0x20:  # ld [k]
            acc = data[k]
            pc += 1
            continue
        taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
        pc += 1 + (jt if taken else jf)


def test_filter_program_decides_every_number_as_specified() -> None:
    arch, numbers, foreign = seccomp._ARCHES[seccomp.platform.machine()]
    program = seccomp._program()
    blocked = {numbers[name] for name in seccomp.BLOCKED if name in numbers}
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050001, 0x00050026, 0x80000000
    for nr in range(1024):
        got = _verdict(program, arch, nr)
        if nr in blocked:
            assert got == eperm, nr
        elif nr == numbers["clone3"]:
            assert got == enosys
        else:
            assert got == allow, nr
    clone = numbers["clone"]
    assert _verdict(program, arch, clone, 0x10000000 | 17) == eperm  # CLONE_NEWUSER
    assert _verdict(program, arch, clone, 0x00020000) == eperm  # CLONE_NEWNS
    assert _verdict(program, arch, clone, 0x01200011) == allow  # what fork() passes
    assert _verdict(program, 0x40000003, 39) == kill  # i386
    if foreign is not None:
        assert _verdict(program, arch, foreign | 39) == kill  # x32
