"""Backups of the store: SQLite's online backup API, or ``pg_dump`` for PostgreSQL.

A backup is taken while servers and workers run: SQLite copies a consistent snapshot page by
page (writers are held up only for each step), ``pg_dump`` reads one repeatable-read snapshot.
A restore replaces the store and must run while no server or worker uses it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from flowlink.errors import Conflict, Invalid
from flowlink.settings import sqlite_path

PAGES_PER_STEP = 1024  # SQLite pages copied per step of an online backup


@dataclass(frozen=True)
class BackupResult:
    """What a backup or restore wrote."""

    path: Path
    size: int
    dialect: str
    revision: str | None


def backup(database_url: str, target: Path, *, overwrite: bool = False) -> BackupResult:
    """Write a consistent copy of the store to ``target`` (mode 0600)."""
    if target.exists() and not overwrite:
        raise Conflict(
            f"{target} exists; pass --force to overwrite it", details={"file": str(target)}
        )
    if not target.parent.is_dir():
        raise Invalid(f"{target.parent} is not a directory", details={"file": str(target)})
    source = sqlite_path(database_url)
    if source is not None:
        return _backup_sqlite(source, target)
    if database_url.startswith("postgresql"):
        return _pg_dump(database_url, target)
    raise Invalid(f"cannot back up a store of this kind: {make_url(database_url).drivername}")


def restore(database_url: str, source: Path, *, overwrite: bool = False) -> BackupResult:
    """Replace the store with a backup made by ``backup`` (no server or worker may run)."""
    if not source.is_file():
        raise Invalid(f"{source} is not a file", details={"file": str(source)})
    target = sqlite_path(database_url)
    if target is not None:
        return _restore_sqlite(source, target, overwrite=overwrite)
    if database_url.startswith("postgresql"):
        return _pg_restore(database_url, source, overwrite=overwrite)
    raise Invalid(f"cannot restore a store of this kind: {make_url(database_url).drivername}")


# --- SQLite ---------------------------------------------------------------------------------


def _revision(connection: sqlite3.Connection, file: Path) -> str:
    try:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as error:
        raise Invalid(
            f"{file} is not a flowlink store: {error}", details={"file": str(file)}
        ) from None
    if row is None:
        raise Invalid(
            f"{file} is not a flowlink store: no schema revision", details={"file": str(file)}
        )
    return str(row[0])


def _check(connection: sqlite3.Connection, file: Path) -> str:
    try:
        result = connection.execute("PRAGMA integrity_check").fetchone()
    except sqlite3.DatabaseError as error:
        raise Invalid(
            f"{file} is not a flowlink store: {error}", details={"file": str(file)}
        ) from None
    if result is None or result[0] != "ok":
        raise Invalid(
            f"{file} failed SQLite's integrity check: {result}", details={"file": str(file)}
        )
    return _revision(connection, file)


@contextlib.contextmanager
def _written_in_place(target: Path, suffix: str) -> Iterator[Path]:
    """A private (0600) file beside ``target`` that replaces it in one rename at the end.

    Nothing is left behind if the block fails: ``target`` stays as it was.
    """
    partial = target.with_name(target.name + suffix)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.close(fd)
    os.chmod(partial, 0o600)
    try:
        yield partial
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _backup_sqlite(source: Path, target: Path) -> BackupResult:
    if not source.is_file():
        raise Invalid(f"the store {source} does not exist", details={"file": str(source)})
    with (
        _written_in_place(target, ".partial") as partial,
        contextlib.closing(sqlite3.connect(source, timeout=30)) as src,
        contextlib.closing(sqlite3.connect(partial)) as dst,
    ):
        src.backup(dst, pages=PAGES_PER_STEP)
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        revision = _check(dst, partial)
    return BackupResult(target, target.stat().st_size, "sqlite", revision)


def _restore_sqlite(source: Path, target: Path, *, overwrite: bool) -> BackupResult:
    if target.exists() and not overwrite:
        raise Conflict(
            f"the store {target} exists; pass --force to replace it", details={"file": str(target)}
        )
    with contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src:
        revision = _check(src, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _written_in_place(target, ".restoring") as partial:
        with (
            contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            contextlib.closing(sqlite3.connect(partial)) as dst,
        ):
            src.backup(dst, pages=PAGES_PER_STEP)
        for suffix in ("-wal", "-shm"):  # the old store's journal must not be replayed
            Path(f"{target}{suffix}").unlink(missing_ok=True)
    return BackupResult(target, target.stat().st_size, "sqlite", revision)


# --- PostgreSQL -----------------------------------------------------------------------------


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL without the password, and the environment that carries it."""
    url = make_url(database_url).set(drivername="postgresql")
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = str(url.password)
        url = url.set(password=None)
    return url.render_as_string(hide_password=False), env


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise Invalid(
            f"{name} is not installed; install the PostgreSQL client (Debian: postgresql-client)"
        )
    return path


def _run(command: list[str], env: dict[str, str], what: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise Invalid(f"{what} failed: {result.stderr.strip()[-2000:]}")


def _pg_dump(database_url: str, target: Path) -> BackupResult:
    url, env = _libpq(database_url)
    with _written_in_place(target, ".partial") as partial:
        _run(
            [_tool("pg_dump"), "--format=custom", "--no-owner", "--file", str(partial), url],
            env,
            "pg_dump",
        )
    return BackupResult(target, target.stat().st_size, "postgresql", None)


def _pg_restore(database_url: str, source: Path, *, overwrite: bool) -> BackupResult:
    url, env = _libpq(database_url)
    listed = subprocess.run(
        [_tool("pg_restore"), "--list", str(source)], env=env, capture_output=True, text=True
    )
    if listed.returncode != 0 or "alembic_version" not in listed.stdout:
        raise Invalid(
            f"{source} is not a pg_dump archive of a flowlink store: "
            f"{listed.stderr.strip()[-500:] or 'no schema revision table'}",
            details={"file": str(source)},
        )
    from sqlalchemy import create_engine, inspect

    engine = create_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    try:
        has_tables = bool(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    if has_tables and not overwrite:
        raise Conflict("the store's database has tables; pass --force to replace them")
    _run(
        [
            _tool("pg_restore"),
            "--clean",
            "--if-exists",
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            "--dbname",
            url,
            str(source),
        ],
        env,
        "pg_restore",
    )
    return BackupResult(source, source.stat().st_size, "postgresql", None)
