"""What a script can and cannot see inside the sandbox."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from flowlink.runtime import pool as pool_module
from flowlink.runtime import sandbox
from flowlink.runtime.pool import RunnerPool

from .conftest import TEST_LIMITS, PoolFactory, requires_root, run_script

SECRET = "s3cr3t-canary-4711"


@pytest.fixture(scope="module")
def secret_env() -> Iterator[str]:
    """A secret in this (the pool owner's) environment, set before the pool starts."""
    os.environ["FLOWLINK_RUNTIME_TEST_SECRET"] = SECRET
    yield SECRET
    os.environ.pop("FLOWLINK_RUNTIME_TEST_SECRET", None)


@pytest.fixture(scope="module")
def secrets() -> Iterator[dict[str, Path]]:
    # not under pytest's tmp_path: that is 0700, and the test must show the mounts hide them;
    # not under /tmp either: runners get their own, empty /tmp (full mode)
    base = Path(tempfile.mkdtemp(prefix="flowlink-secrets-", dir=pool_module._base_parent()))
    base.chmod(0o755)
    store = base / "store.db"
    store.write_text(f"store {SECRET}")
    store.chmod(0o644)  # world-readable on purpose: only the sandbox may hide it
    wal = base / "store.db-wal"
    wal.write_text(f"wal {SECRET}")
    wal.chmod(0o644)
    key = base / "secret.key"
    key.write_text(f"key {SECRET}")
    key.chmod(0o600)
    keydir = base / "keys"
    keydir.mkdir()
    keydir.chmod(0o755)
    (keydir / "a.pem").write_text(f"pem {SECRET}")
    (keydir / "a.pem").chmod(0o644)
    unprotected = base / "public.txt"
    unprotected.write_text("public data")
    unprotected.chmod(0o644)
    yield {"store": store, "wal": wal, "key": key, "keydir": keydir, "public": unprotected}
    shutil.rmtree(base)


@pytest.fixture(scope="module")
def guarded_pool(secret_env: str, secrets: dict[str, Path]) -> Iterator[RunnerPool]:
    p = RunnerPool(
        warm_size=1,
        limits=TEST_LIMITS,
        protected_paths=[str(secrets[k]) for k in ("store", "wal", "key", "keydir")],
    )
    p.start()
    yield p
    p.close()


READ_SCRIPT = """
import os

def attempt(path):
    try:
        if os.path.isdir(path):
            return 'dir:' + ','.join(sorted(os.listdir(path)))
        with open(path, encoding='utf-8', errors='replace') as fh:
            return 'read:' + fh.read()
    except OSError as exc:
        return type(exc).__name__

def handler(system, this, inputs):
    return this.success('ok', **{name: attempt(path) for name, path in inputs.items()})
"""


@requires_root
def test_protected_paths_are_hidden(guarded_pool: RunnerPool, secrets: dict[str, Path]) -> None:
    assert guarded_pool.mode == "full"
    paths = {name: str(path) for name, path in secrets.items()}
    paths["keyfile_in_dir"] = str(secrets["keydir"] / "a.pem")
    run = run_script(guarded_pool, READ_SCRIPT, inputs=paths)
    assert run.outcome.status == "success", run.outcome
    out = run.outcome.outputs
    assert out["store"] == "read:"  # /dev/null is bound over it
    assert out["wal"] == "read:"
    assert out["key"] in ("read:", "PermissionError")
    assert out["keydir"] in ("dir:", "PermissionError")
    assert out["keyfile_in_dir"] in ("PermissionError", "FileNotFoundError")
    assert out["public"] == "read:public data"
    assert SECRET not in repr(out) and SECRET not in repr(run.logs)


@requires_root
def test_root_owned_private_files_are_unreadable_even_if_not_listed(
    pool: RunnerPool, secrets: dict[str, Path]
) -> None:
    run = run_script(
        pool, READ_SCRIPT, inputs={"key": str(secrets["key"]), "shadow": "/etc/shadow"}
    )
    assert run.outcome.outputs == {"key": "PermissionError", "shadow": "PermissionError"}


def test_server_environment_is_not_visible(guarded_pool: RunnerPool, secret_env: str) -> None:
    run = run_script(
        guarded_pool,
        """
        import os

        def grab(path):
            try:
                with open(path, 'rb') as fh:
                    return fh.read().decode('utf-8', 'replace')
            except OSError as exc:
                return type(exc).__name__

        def handler(system, this, inputs):
            owner = inputs['owner']
            return this.success(
                'ok',
                environ=grab(f'/proc/{owner}/environ'),
                ppid_environ=grab(f'/proc/{os.getppid()}/environ'),
                cmdline=grab(f'/proc/{owner}/cmdline'),
                own_env=dict(os.environ),
            )
        """,
        inputs={"owner": os.getpid()},
    )
    assert run.outcome.status == "success", run.outcome
    out = run.outcome.outputs
    assert secret_env not in repr(out)
    assert out["environ"] in ("PermissionError", "FileNotFoundError")
    tmpdir = run.runner.tmpdir
    assert out["own_env"] == {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": tmpdir,
        "TMPDIR": tmpdir,
    }


def test_zygote_environment_is_scrubbed(guarded_pool: RunnerPool, secret_env: str) -> None:
    with open(f"/proc/{guarded_pool.zygote_pid}/environ", "rb") as fh:
        env = dict(item.split(b"=", 1) for item in fh.read().split(b"\0") if item)
    assert env == {
        b"PATH": b"/usr/local/bin:/usr/bin:/bin",
        b"LANG": b"C.UTF-8",
        b"HOME": b"/nonexistent",
    }
    assert os.readlink(f"/proc/{guarded_pool.zygote_pid}/cwd") == "/"


def test_stdlib_and_site_packages_import_inside_the_sandbox(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import decimal, sqlite3, email.mime.text, ssl, zoneinfo, xml.etree.ElementTree, csv, ctypes
        import yaml, jinja2

        def handler(system, this):
            con = sqlite3.connect(':memory:')
            value = con.execute('select 40 + 2').fetchone()[0]
            msg = email.mime.text.MIMEText('hi')
            return this.success(
                'ok',
                value=value,
                dec=str(decimal.Decimal('1.10') + decimal.Decimal('2.20')),
                mime=msg.get_content_type(),
                yaml=yaml.safe_load('a: 1'),
                tpl=jinja2.Template('{{ x }}!').render(x='y'),
            )
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs == {
        "value": 42,
        "dec": "3.30",
        "mime": "text/plain",
        "yaml": {"a": 1},
        "tpl": "y!",
    }


@requires_root
def test_identity_cwd_and_hidden_home(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import os, tempfile

        def handler(system, this):
            with open('scratch.txt', 'w') as fh:
                fh.write('x')
            try:
                proc_entries = sorted(p for p in os.listdir('/proc') if p.isdigit())
            except OSError:
                proc_entries = []
            return this.success(
                'ok',
                ids=[os.getuid(), os.geteuid(), os.getgid(), os.getgroups()],
                pid=os.getpid(),
                cwd=os.getcwd(),
                tmp=tempfile.gettempdir(),
                root_home=sorted(os.listdir('/root')),
                visible_pids=len(proc_entries),
                scratch_mode=oct(os.stat('scratch.txt').st_mode & 0o777),
                nnp=open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0],
                cap_eff=open('/proc/self/status').read().split('CapEff:')[1].split()[0],
            )
        """,
    )
    out = run.outcome.outputs
    runner = run.runner
    assert sandbox.UID_BASE <= runner.uid < sandbox.UID_BASE + sandbox.UID_RANGE
    assert out["pid"] == runner.pid
    assert out["ids"] == [runner.uid, runner.uid, runner.uid, []]
    assert out["cwd"] == runner.tmpdir and out["tmp"] == runner.tmpdir
    assert out["root_home"] == [".pyenv"] or ".bashrc" not in out["root_home"]
    assert out["visible_pids"] <= 3  # hidepid: only its own processes
    assert out["scratch_mode"] == "0o600"
    assert out["nnp"] == "1"
    assert out["cap_eff"] == "0000000000000000"
    # the temp dir was removed with the runner
    assert not os.path.exists(runner.tmpdir)


def test_unprivileged_mode_runs_scripts(fresh_pool_factory: PoolFactory) -> None:
    weak = fresh_pool_factory(force_unprivileged=True)
    assert weak.mode == "unprivileged"
    run = run_script(
        weak,
        """
        import os, decimal

        def handler(system, this, inputs):
            return this.success('ok', uid=os.getuid(), cwd=os.getcwd(), home=os.environ['HOME'])
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs["uid"] == os.getuid()
    assert run.outcome.outputs["cwd"] == run.runner.tmpdir
    assert not os.path.exists(run.runner.tmpdir)
