"""Read and write workspace folders on disk (the only file-system part of the loader)."""

from __future__ import annotations

import base64
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .spec import FILES_DIR, SETTINGS_FILE, WORKSPACE_FILE, classify_path
from .yamlsource import SpecError

__all__ = ["read_folder", "write_folder"]

_CONTENT_DIRS = ("flows", "pages")
_STALE = (("flows", ".py"), ("pages", ".html"), ("pages", ".yml"))


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith((".pyc", "~"))


def _read_text(path: Path, rel: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read file: {exc.strerror or exc}", file=rel) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise SpecError(
            f"not valid UTF-8 (byte 0x{data[start]:02x} at offset {start}); save the file as UTF-8",
            file=rel,
            line=line,
            column=column,
        ) from None


def read_folder(path: str | Path) -> dict[str, str]:
    """Read a workspace folder into relative POSIX path -> text, ready for ``parse_bundle``.

    Reads workspace.yml, settings.yml, every file under flows/ and pages/
    (skipping hidden files, ``__pycache__`` and editor backups) and every file under
    files/ (any bytes, given base64-encoded; hidden files skipped); other files in
    the folder (README.md, .git, ...) are ignored. Raises :class:`SpecError` for a
    missing folder or workspace.yml and for a file that is not UTF-8.
    """
    root = Path(path)
    if not root.exists():
        raise SpecError("workspace folder not found", file=str(root))
    if not root.is_dir():
        raise SpecError(
            "not a folder (expected a workspace folder with workspace.yml)", file=str(root)
        )
    for wrong, right in (("workspace.yaml", WORKSPACE_FILE), ("settings.yaml", SETTINGS_FILE)):
        if (root / wrong).exists():
            raise SpecError(f"rename {wrong} to {right}", file=wrong)
    if not (root / WORKSPACE_FILE).is_file():
        raise SpecError(f"missing {WORKSPACE_FILE} in {root}", file=WORKSPACE_FILE)
    files: dict[str, str] = {WORKSPACE_FILE: _read_text(root / WORKSPACE_FILE, WORKSPACE_FILE)}
    if (root / SETTINGS_FILE).is_file():
        files[SETTINGS_FILE] = _read_text(root / SETTINGS_FILE, SETTINGS_FILE)
    for folder in _CONTENT_DIRS:
        base = root / folder
        if not base.is_dir():
            continue
        for current, dirs, names in os.walk(base):
            dirs[:] = sorted(d for d in dirs if not _skipped(d))
            for name in sorted(names):
                if _skipped(name):
                    continue
                full = Path(current) / name
                rel = full.relative_to(root).as_posix()
                files[rel] = _read_text(full, rel)
    files_root = root / FILES_DIR.rstrip("/")
    if files_root.is_dir():
        for current, dirs, names in os.walk(files_root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.startswith("."):
                    continue
                full = Path(current) / name
                rel = full.relative_to(root).as_posix()
                try:
                    files[rel] = base64.b64encode(full.read_bytes()).decode("ascii")
                except OSError as exc:
                    raise SpecError(f"cannot read file: {exc.strerror or exc}", file=rel) from None
    return dict(sorted(files.items()))


def _write_if_changed(target: Path, text: str, rel: str) -> None:
    try:
        if rel.startswith(FILES_DIR):
            data = base64.b64decode(text.encode("ascii"), validate=True)
        else:
            data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise SpecError("contains characters that are not valid UTF-8", file=rel) from None
    except ValueError:
        raise SpecError("files/ entries are base64-encoded; this one is not", file=rel) from None
    try:
        if target.is_file() and target.read_bytes() == data:
            return
    except OSError:
        pass
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o7777)
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_folder(path: str | Path, files: Mapping[str, str]) -> None:
    """Write workspace files (as from ``bundle_to_files``) into a folder.

    Creates the folder and its subfolders, writes each file atomically (and
    only when its content changed), and removes stale ``flows/*.py``,
    ``pages/*.html`` and ``pages/*.yml`` that are not in ``files`` (deleted from the
    workspace). Other files (README.md, settings.yml when not given, ...) are left alone. Raises
    :class:`SpecError` for a path that is not a workspace file.
    """
    root = Path(path)
    for rel in files:
        classify_path(rel)  # refuses anything outside the known layout (and "..")
    if root.exists() and not root.is_dir():
        raise SpecError("not a folder", file=str(root))
    try:
        root.mkdir(parents=True, exist_ok=True)
        for rel in sorted(files):
            _write_if_changed(root / rel, files[rel], rel)
        for folder, suffix in _STALE:
            base = root / folder
            if not base.is_dir():
                continue
            for entry in sorted(base.iterdir()):
                rel = f"{folder}/{entry.name}"
                if _skipped(entry.name) or rel in files:
                    continue
                if entry.name.endswith(suffix) and entry.is_file():
                    entry.unlink()
    except OSError as exc:
        raise SpecError(f"cannot write workspace folder: {exc}", file=str(root)) from None
