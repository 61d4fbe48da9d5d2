"""Workspace files: named byte blobs of a workspace, for flows, the API and workspace folders.

A file's path is relative and POSIX (``reports/2026/q1.csv``): segments of letters, digits,
``_``, ``.`` and ``-`` starting with a letter or digit, at most 8 deep and 512 characters.
Sizes are limited per file and per workspace (``FLOWLINK_FILE_MAX_BYTES``, default 10 MiB;
``FLOWLINK_WORKSPACE_FILES_MAX_BYTES``, default 100 MiB); going over either is a 413 naming
the path, the size and the limit, and nothing is written.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flowlink.errors import Invalid, NotFound
from flowlink.events.service import record
from flowlink.store.models import Workspace, WorkspaceFile, utcnow
from flowlink.timestamps import format_timestamp
from flowlink.workspaces.spec import FILES_DIR, file_path_problem

__all__ = ["FILES_DIR", "FileTooLarge", "file_path_problem"]

DEFAULT_FILE_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_WORKSPACE_MAX_BYTES = 100 * 1024 * 1024


class FileTooLarge(Invalid):
    """A file, or all files of a workspace together, would be over the size limit (413)."""

    code = "payload_too_large"
    status = 413


def _limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() else default


def file_max_bytes() -> int:
    """The largest file a workspace may hold (``FLOWLINK_FILE_MAX_BYTES``)."""
    return _limit("FLOWLINK_FILE_MAX_BYTES", DEFAULT_FILE_MAX_BYTES)


def workspace_max_bytes() -> int:
    """The most bytes all files of one workspace may hold together."""
    return _limit("FLOWLINK_WORKSPACE_FILES_MAX_BYTES", DEFAULT_WORKSPACE_MAX_BYTES)


def check_path(path: Any) -> str:
    """Return ``path`` if it is a valid file path, else raise Invalid naming it."""
    problem = file_path_problem(path)
    if problem:
        raise Invalid(problem, details={"field": "path", "path": path})
    return str(path)


def check_size(path: str, size: int) -> None:
    """Raise :class:`FileTooLarge` for a file over the per-file limit."""
    limit = file_max_bytes()
    if size > limit:
        raise FileTooLarge(
            f"file {path!r} is {size} bytes; the limit is {limit} bytes per file",
            details={"field": "content", "path": path, "size": size, "limit": limit},
        )


def list_files(session: Session, workspace: Workspace) -> list[WorkspaceFile]:
    """Every file of the workspace, by path (content not loaded until read)."""
    return list(
        session.scalars(
            select(WorkspaceFile)
            .where(WorkspaceFile.workspace_id == workspace.id)
            .order_by(WorkspaceFile.path)
        )
    )


def find_file(session: Session, workspace: Workspace, path: str) -> WorkspaceFile | None:
    """The file at ``path``, or None."""
    return session.scalar(
        select(WorkspaceFile).where(
            WorkspaceFile.workspace_id == workspace.id, WorkspaceFile.path == path
        )
    )


def get_file(session: Session, workspace: Workspace, path: str) -> WorkspaceFile:
    """The file at ``path``, or NotFound."""
    check_path(path)
    found = find_file(session, workspace, path)
    if found is None:
        raise NotFound(
            f"file {path!r} not found in workspace {workspace.slug!r}",
            details={"workspace": workspace.slug, "file": path},
        )
    return found


def _total(session: Session, workspace: Workspace, without: str | None = None) -> int:
    query = select(func.coalesce(func.sum(WorkspaceFile.size), 0)).where(
        WorkspaceFile.workspace_id == workspace.id
    )
    if without is not None:
        query = query.where(WorkspaceFile.path != without)
    return int(session.scalar(query) or 0)


def put_file(
    session: Session,
    workspace: Workspace,
    path: str,
    content: bytes,
    *,
    execution_id: str | None = None,
) -> tuple[WorkspaceFile, str]:
    """Create or replace a file; returns it and ``created``, ``updated`` or ``unchanged``.
    Records ``files.updated`` (path and size, never the content)."""
    check_path(path)
    check_size(path, len(content))
    total = _total(session, workspace, without=path) + len(content)
    limit = workspace_max_bytes()
    if total > limit:
        raise FileTooLarge(
            f"file {path!r} would bring the files of workspace {workspace.slug!r} to {total}"
            f" bytes; the limit is {limit} bytes per workspace",
            details={"field": "content", "path": path, "size": total, "limit": limit},
        )
    digest = hashlib.sha256(content).hexdigest()
    existing = find_file(session, workspace, path)
    created = existing is None
    if existing is None:
        existing = WorkspaceFile(
            workspace_id=workspace.id, path=path, content=content, size=len(content), sha256=digest
        )
        session.add(existing)
    elif existing.sha256 == digest:
        return existing, "unchanged"
    else:
        existing.content = content
        existing.size = len(content)
        existing.sha256 = digest
        existing.updated_at = utcnow()
    record(
        session,
        workspace,
        "files.updated",
        {"path": path, "size": len(content), "created": created},
        execution_id=execution_id,
    )
    session.flush()
    return existing, "created" if created else "updated"


def delete_file(
    session: Session, workspace: Workspace, path: str, *, execution_id: str | None = None
) -> None:
    """Delete a file."""
    session.delete(get_file(session, workspace, path))
    record(
        session,
        workspace,
        "files.updated",
        {"path": path, "deleted": True},
        execution_id=execution_id,
    )


def apply_files(session: Session, workspace: Workspace, files: Mapping[str, bytes]) -> list[str]:
    """The ``files/`` of a workspace folder: created or replaced when their content differs.

    Files the folder does not have are kept (flows may have written them).
    """
    changes = []
    for path, content in sorted(files.items()):
        _, state = put_file(session, workspace, path, content)
        if state != "unchanged":
            changes.append(("+" if state == "created" else "~") + path)
    return changes


def file_view(file: WorkspaceFile) -> dict[str, Any]:
    """The API representation of a file (without its content)."""
    return {
        "path": file.path,
        "size": file.size,
        "sha256": file.sha256,
        "content_type": content_type(file.path),
        "created_at": format_timestamp(file.created_at),
        "updated_at": format_timestamp(file.updated_at),
    }


def content_type(path: str) -> str:
    """The media type a file is served with (guessed from its name)."""
    guessed, _ = mimetypes.guess_type(path)
    return guessed or "application/octet-stream"
