"""Nothing of one execution outlives it or reaches the next one, even with the same pid."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest

from flowlink.runtime import pool as pool_module
from flowlink.runtime import sandbox
from flowlink.runtime.pool import RunnerPool

from .conftest import SHMEM, PoolFactory, requires_root, run_script

BETA_WRITES = """
import os

def handler(system, this, inputs):
    for path in ('/tmp/beta-cache.json', '/dev/shm/beta-cache.json', '/var/tmp/beta-cache.json'):
        with open(path, 'w') as fh:
            fh.write('{"api_token": "beta-secret"}')
        os.chmod(path, 0o600)
    return this.success('written', pid=os.getpid(), uid=os.getuid())
"""

ALPHA_READS = """
import os

def handler(system, this, inputs):
    found = {}
    for path in ('/tmp/beta-cache.json', '/dev/shm/beta-cache.json', '/var/tmp/beta-cache.json'):
        try:
            with open(path) as fh:
                found[path] = fh.read()
        except OSError as exc:
            found[path] = type(exc).__name__
    return this.success(
        'read', pid=os.getpid(), uid=os.getuid(), found=found,
        tmp=sorted(os.listdir('/tmp')), shm=sorted(os.listdir('/dev/shm')),
    )
"""

NS_LAST_PID = "/proc/sys/kernel/ns_last_pid"
BETA_FILES = ("/tmp/beta-cache.json", "/dev/shm/beta-cache.json", "/var/tmp/beta-cache.json")


@pytest.fixture()
def no_beta_files() -> Iterator[None]:
    """Without a private /tmp the files would stay on the host: never leave them behind."""
    yield
    for path in BETA_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _fork_with_pid(pool: RunnerPool, pid: int, script: str) -> dict[str, object] | None:
    """Run ``script`` in a runner forked with ``pid`` (None if another process took it)."""
    with open(NS_LAST_PID, "w") as fh:
        fh.write(str(pid - 1))
    run = run_script(pool, script, name="alpha")
    assert run.outcome.status == "success", run.outcome
    outputs = run.outcome.outputs
    return outputs if outputs["pid"] == pid else None


@requires_root
def test_pid_wrap_does_not_hand_beta_files_to_alpha(
    fresh_pool_factory: PoolFactory, no_beta_files: None
) -> None:
    """The reported attack: alpha's runner gets the pid beta's runner had."""
    if not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("needs a writable /proc/sys/kernel/ns_last_pid (root in the pid namespace)")
    p = fresh_pool_factory(warm_size=0)  # fork at acquire(): the pid is chosen right then
    beta = run_script(p, BETA_WRITES, name="beta")
    assert beta.outcome.status == "success", beta.outcome
    beta_pid = int(beta.outcome.outputs["pid"])
    alpha = None
    tries, give_up = 0, time.monotonic() + 60
    # Another process on the host may take the pid first (the parallel suite forks runners
    # all the time): retry for a while rather than a fixed number of times.
    while alpha is None and time.monotonic() < give_up:
        tries += 1
        alpha = _fork_with_pid(p, beta_pid, ALPHA_READS)
    assert alpha is not None, f"could not get pid {beta_pid} again in {tries} tries"
    found = alpha["found"]
    assert isinstance(found, dict)
    assert all(value == "FileNotFoundError" for value in found.values()), found
    assert alpha["uid"] != beta.outcome.outputs["uid"]
    if p.mode == "full":
        # private, empty (but for the interpreter's own directories, when it lives below /tmp)
        own = {path.split("/")[2] for path in sandbox.python_paths_under(["/tmp"])}
        assert set(alpha["tmp"]) == own and alpha["shm"] == []
        # and the files are gone for everybody once beta ended
        assert not any(os.path.exists(path) for path in BETA_FILES)


@requires_root
@SHMEM
def test_private_tmp_is_gone_with_the_execution_and_capped(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import os, subprocess

        def handler(system, this):
            with open('/dev/shm/x', 'wb') as fh:
                fh.write(b'x' * 1024)
            try:
                with open('/tmp/big', 'wb') as fh:
                    fh.write(b'x' * (300 << 20))  # the test pool's memory limit is 256 MB
                full = False
            except OSError as exc:
                full = exc.errno
            os.unlink('/tmp/big')
            st = os.statvfs('/tmp')
            same = os.stat('/tmp').st_dev == os.stat('/dev/shm').st_dev
            return this.success('ok', full=full, size_mb=st.f_blocks * st.f_frsize >> 20,
                                same=same, mode=oct(os.stat('/tmp').st_mode & 0o7777))
        """,
    )
    if pool.mode != "full":
        pytest.skip("private directories need the full sandbox")
    assert run.outcome.status in ("success", "error"), run.outcome
    if run.outcome.status == "success":
        out = run.outcome.outputs
        assert out["full"] == 28  # ENOSPC: the tmpfs is capped at the memory limit
        assert out["size_mb"] == 256
        assert out["same"] is True  # one tmpfs (and one cap) for /tmp, /dev/shm, ...
        assert out["mode"] == "0o1777"
    else:  # the memory cgroup stopped it first: also a limit
        assert run.outcome.error_kind == "memory_limit", run.outcome
    assert not os.path.exists("/dev/shm/x")


@requires_root
def test_uids_do_not_follow_pids(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(warm_size=0)
    uids = set()
    for _ in range(3):
        run = run_script(
            p, "import os\ndef handler(system, this):\n    return this.success('ok')\n"
        )
        assert run.runner.uid >= sandbox.UID_BASE
        assert run.runner.uid != sandbox.UID_BASE + run.runner.pid
        uids.add(run.runner.uid)
    assert len(uids) == 3


def test_uid_allocator_skips_uids_in_use(tmp_path: os.PathLike[str]) -> None:
    state = os.path.join(str(tmp_path), "uids")
    first = sandbox.UidAllocator(state)
    second = sandbox.UidAllocator(state)  # another zygote on the host: its own block
    a, b = first.allocate(), second.allocate()
    assert a == sandbox.UID_BASE and b == sandbox.UID_BASE + 1024
    assert first.allocate() == a + 1
    with open(state) as fh:
        assert fh.read() == "2048"
    if os.geteuid() == 0:
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.setresuid(a + 2, a + 2, a + 2)
            os.write(ready_w, b"x")
            time.sleep(60)  # until killed
            os._exit(0)
        os.read(ready_r, 1)
        try:
            assert sandbox.uid_in_use(a + 2)
            assert first.allocate() == a + 3  # a + 2 still has a process: skipped
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            os.close(ready_r)
            os.close(ready_w)


@requires_root
def test_files_a_uid_left_in_shared_directories_are_removed() -> None:
    """Without private directories (``uid`` mode) the sweeper removes what a uid left."""
    base = tempfile.mkdtemp(prefix="flowlink-shared-", dir=pool_module._base_parent())
    try:
        os.chmod(base, 0o755)  # reachable for the uid, like /tmp
        shared = os.path.join(base, "shared")
        os.mkdir(shared)
        os.chmod(shared, 0o1777)
        uid = sandbox.UID_BASE + sandbox.UID_RANGE - 7
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child: what a script of that uid leaves behind
            code = 1
            try:
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                with open(os.path.join(shared, "cache.json"), "w") as fh:
                    fh.write("secret")
                os.makedirs(os.path.join(shared, "work", "deep"))
                os.symlink("/etc", os.path.join(shared, "etc-link"))
                os.symlink("/etc/hostname", os.path.join(shared, "work", "deep", "x"))
                code = 0
            finally:
                os._exit(code)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
        with open(os.path.join(shared, "root-file"), "w") as fh:
            fh.write("kept")  # not that uid's
        assert sandbox.remove_files_of(uid, [shared]) == 3
        assert os.listdir(shared) == ["root-file"]
        assert os.path.exists("/etc/hostname")  # links were removed, not followed
        assert os.getresuid() == (0, 0, 0)
    finally:
        shutil.rmtree(base)
