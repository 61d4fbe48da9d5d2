"""Limits per execution (control groups), not per process, and the rlimit fallback."""

from __future__ import annotations

import os

import pytest

from flowlink.runtime import cgroups
from flowlink.runtime.pool import RunnerLimits, RunnerPool
from flowlink.settings import ServerSettings

from .conftest import (
    SHMEM,
    TEST_LIMITS,
    PoolFactory,
    cgroups_expected,
    requires_root,
    run_script,
)

#: four children, 100 MB each (pages touched), all four alive with it at once: 400 MB under a
#: 256 MB limit. Each child tells the parent when it holds its 100 MB and then waits for the
#: parent's word (at most 20 s); the parent lets them go once all four hold theirs (or the
#: rest are gone), so the script takes no longer than the allocations where it may finish.
FOUR_CHILDREN = """
import os, select

def handler(system, this):
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    children = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            os.close(go_w)
            hog = bytearray(100 << 20)
            for i in range(0, len(hog), 4096):
                hog[i] = 1
            os.write(ready_w, b'+')
            select.select([go_r], [], [], 20)
            os._exit(0)
        children.append(pid)
    os.close(ready_w)
    os.close(go_r)
    held = b''
    while len(held) < 4:
        chunk = os.read(ready_r, 4)
        if not chunk:
            break
        held += chunk
    os.close(go_w)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    return this.success('children done', codes=codes, together=len(held))
"""

SHM_200_MB = """
def handler(system, this):
    with open('/dev/shm/blob', 'wb') as fh:
        for _ in range(200):
            fh.write(b'x' * (1 << 20))
"""
HOG_100_MB = """
    hog = bytearray(100 << 20)
    for i in range(0, len(hog), 4096):
        hog[i] = 1
    return this.success('should not get here')
"""

FORK_BOMB = """
import os

def handler(system, this):
    while True:
        try:
            os.fork()
        except OSError:
            pass
"""

FOUR_SPINNERS = """
import os

def handler(system, this):
    for _ in range(3):
        if os.fork() == 0:
            break
    while True:
        pass
"""


def _shmem_mb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("Shmem:"):
                return int(line.split()[1]) / 1024
    return 0.0


@pytest.fixture(scope="module")
def cg_pool() -> RunnerPool:
    p = RunnerPool(warm_size=1, limits=TEST_LIMITS)
    p.start()
    if p.sandbox_info()["limits"] == "rlimit":
        p.close()
        if cgroups_expected():
            pytest.fail(f"control groups not used: {p.sandbox_info().get('limits_note')}")
        pytest.skip("this machine offers no control groups to this process")
    yield p  # type: ignore[misc]
    p.close()


def test_sandbox_info_names_what_is_in_force(cg_pool: RunnerPool) -> None:
    info = cg_pool.sandbox_info()
    assert info["limits"] in ("cgroup-v1", "cgroup-v2")
    assert info["memory_mb"] == 256 and info["processes"] == 32 and info["cpu_seconds"] == 60
    assert info["private_tmp"] is (info["mode"] == "full")


def test_four_children_together_cannot_exceed_the_memory_limit(cg_pool: RunnerPool) -> None:
    run = run_script(cg_pool, FOUR_CHILDREN, timeout=60)
    assert run.outcome.status == "error", run.outcome
    assert run.outcome.error_kind == "memory_limit"
    assert run.outcome.message == "memory limit exceeded (256 MB)"
    assert run.elapsed < 15


@SHMEM
def test_dev_shm_counts_and_is_gone_after_the_end(cg_pool: RunnerPool) -> None:
    before = _shmem_mb()
    run = run_script(cg_pool, SHM_200_MB + "    return this.success('written')\n")
    assert run.outcome.status == "success", run.outcome
    assert _shmem_mb() - before < 100  # the 200 MB went with the execution's tmpfs
    run = run_script(cg_pool, SHM_200_MB + HOG_100_MB, timeout=60)
    assert run.outcome.error_kind == "memory_limit", run.outcome
    assert _shmem_mb() - before < 100


def test_fork_bomb_is_stopped_by_the_pids_limit(cg_pool: RunnerPool) -> None:
    # every process catches the fork error and goes on: only the execution's limit ends it
    run = run_script(cg_pool, FORK_BOMB, timeout=30)
    assert run.outcome.status == "error", run.outcome
    assert run.outcome.error_kind == "process_limit"
    assert run.outcome.message == "process limit exceeded (32 processes)"
    assert run.elapsed < 10


def test_cpu_time_counts_every_process(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(limits=RunnerLimits(cpu_seconds=2, memory_mb=256, processes=16))
    if p.sandbox_info()["limits"] == "rlimit":
        pytest.skip("no control groups here")
    run = run_script(p, FOUR_SPINNERS, timeout=120)
    assert run.outcome.status == "error", run.outcome
    assert run.outcome.error_kind == "cpu_limit"
    assert run.outcome.message == "CPU time limit exceeded (2 s)"


@pytest.mark.slow
@requires_root
@SHMEM
def test_rlimit_fallback_is_selectable_and_per_process(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory(cgroups=False)
    info = p.sandbox_info()
    assert info["limits"] == "rlimit"
    assert info["limits_note"] == "cgroups disabled by configuration"
    # per process: each child stays under 256 MB, so four of them pass
    run = run_script(p, FOUR_CHILDREN, timeout=60)
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs["codes"] == [0, 0, 0, 0]
    assert run.outcome.outputs["together"] == 4  # 400 MB held at once
    # but a single process still cannot go over its own limit
    run = run_script(p, "def handler(system, this):\n    x = bytearray(10**10)\n")
    assert run.outcome.error_kind == "memory_limit"
    # the private tmpfs is capped at the memory limit too
    run = run_script(
        p,
        """
        def handler(system, this):
            try:
                with open('/dev/shm/blob', 'wb') as fh:
                    for _ in range(300):
                        fh.write(b'x' * (1 << 20))
            except OSError as exc:
                return this.success('full', errno=exc.errno)
            return this.success('not full')
        """,
    )
    if info["private_tmp"]:
        assert run.outcome.outputs == {"errno": 28}


def test_the_setting_selects_the_fallback() -> None:
    assert ServerSettings.from_env({}).runner_cgroups is True
    assert ServerSettings.from_env({"FLOWLINK_RUNNER_CGROUPS": "off"}).runner_cgroups is False
    assert ServerSettings.from_env({"FLOWLINK_RUNNER_CGROUPS": "auto"}).runner_cgroups is True
    with pytest.raises(ValueError, match="FLOWLINK_RUNNER_CGROUPS"):
        ServerSettings.from_env({"FLOWLINK_RUNNER_CGROUPS": "maybe"})


def test_parent_groups_are_removed_with_the_pool(fresh_pool_factory: PoolFactory) -> None:
    p = fresh_pool_factory()
    zygote = p.zygote_pid
    if p.sandbox_info()["limits"] == "rlimit":
        pytest.skip("no control groups here")
    setup, _ = cgroups.setup("probe")
    assert setup is not None
    parents = [
        os.path.join(os.path.dirname(d), f"flowlink-{zygote}") for d in setup.parents.values()
    ]
    cgroups.remove_parents(setup)
    assert all(os.path.isdir(d) for d in parents)
    p.close()
    assert not any(os.path.exists(d) for d in parents)


GROUP_REPORT = """
import os

def read(path):
    with open(path) as fh:
        return fh.read().split()

def handler(system, this):
    groups = {}
    with open('/proc/self/cgroup') as fh:
        for line in fh.read().splitlines():
            _, controllers, path = line.split(':', 2)
            for controller in controllers.split(','):
                groups[controller] = path
    pids = '/sys/fs/cgroup/pids' + groups['pids']
    memory = '/sys/fs/cgroup/memory' + groups['memory']
    return this.success(
        'ok',
        group=groups['pids'],
        procs=[int(p) for p in read(pids + '/cgroup.procs')],
        me=os.getpid(),
        pids_max=read(pids + '/pids.max'),
        memory_limit=read(memory + '/memory.limit_in_bytes'),
    )
"""


def test_a_reused_group_starts_empty_with_its_limits_and_no_earlier_hit(
    fresh_pool_factory: PoolFactory,
) -> None:
    # groups are handed from one runner to the next: the fork bomb's group is reused (the last
    # freed is taken first), and the runs in it see only themselves, the same limits, and no
    # "process limit" of the bomb (the baseline is the group's counters when it was freed)
    p = fresh_pool_factory(limits=TEST_LIMITS, warm_size=1)
    if p.sandbox_info()["limits"] != "cgroup-v1":
        pytest.skip("reads cgroup v1 files")
    bomb = run_script(p, "import os\nprint(open('/proc/self/cgroup').read())\n" + FORK_BOMB)
    assert bomb.outcome.error_kind == "process_limit", bomb.outcome
    bomb_group = next(line.split(":", 2)[2] for line in bomb.logs if ":pids:" in line)
    seen: list[str] = []
    for _ in range(4):
        run = run_script(p, GROUP_REPORT)
        assert run.outcome.status == "success", run.outcome
        out = run.outcome.outputs
        assert out["procs"] == [out["me"]]
        assert out["pids_max"] == [str(TEST_LIMITS.processes)]
        assert out["memory_limit"] == [str(TEST_LIMITS.memory_mb << 20)]
        seen.append(out["group"])
    assert bomb_group in seen
