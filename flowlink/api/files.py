"""Routes for workspace files: list, download, upload (raw bytes) and delete."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from flowlink.access.policy import allows, authorize
from flowlink.api.deps import Caller, Context
from flowlink.api.responses import ApiRoute
from flowlink.workspaces import files
from flowlink.workspaces import service as workspaces
from flowlink.workspaces.views import FileList, FileView

BINARY = {"type": "string", "format": "binary"}
router = APIRouter(prefix="/api/v1/workspaces/{ws}/files", tags=["files"], route_class=ApiRoute)


@router.get("", response_model=FileList)
def list_files(ws: str, context: Context, caller: Caller) -> dict[str, Any]:
    """Every file of the workspace (path, size, sha256, content type, times; no content)."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "files", workspace)
        return {
            "items": [
                files.file_view(f)
                for f in files.list_files(session, workspace)
                if allows(caller, "read", "files", workspace, {"path": f.path})
            ]
        }


@router.get(
    "/{path:path}",
    response_class=Response,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The file's content, served with its own media type",
        }
    },
)
def get_file(ws: str, path: str, context: Context, caller: Caller) -> Response:
    """The file's content, with its media type and ``ETag`` (its SHA-256)."""
    with context.store.read() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "read", "files", workspace, {"path": path})
        found = files.get_file(session, workspace, path)
        return Response(
            content=found.content,
            media_type=files.content_type(found.path),
            headers={"ETag": f'"{found.sha256}"'},
        )


@router.put(
    "/{path:path}",
    response_model=FileView,
    responses={201: {"model": FileView, "description": "Created"}},
    openapi_extra={
        "requestBody": {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            }
        }
    },
)
async def put_file(
    ws: str, path: str, request: Request, response: Response, context: Context, caller: Caller
) -> dict[str, Any]:
    """Create or replace a file with the request body (raw bytes); 201 when created.

    Over the per-file or per-workspace size limit: 413, and nothing is written.
    """
    files.check_path(path)
    declared = request.headers.get("content-length", "")
    if declared.isdigit():
        files.check_size(path, int(declared))  # before reading a body that is too big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        files.check_size(path, len(body))
    return await _store(ws, path, bytes(body), response, context, caller)


async def _store(
    ws: str, path: str, content: bytes, response: Response, context: Context, caller: Caller
) -> dict[str, Any]:
    def write() -> dict[str, Any]:
        with context.store.write() as session:
            workspace = workspaces.get_workspace(session, ws)
            exists = files.find_file(session, workspace, path) is not None
            action = "update" if exists else "create"
            authorize(caller, action, "files", workspace, {"path": path})
            stored, state = files.put_file(session, workspace, path, content)
            response.status_code = 201 if state == "created" else 200
            return files.file_view(stored)

    return await run_in_threadpool(write)


@router.delete("/{path:path}", status_code=204, response_class=Response)
def delete_file(ws: str, path: str, context: Context, caller: Caller) -> Response:
    """Delete a file."""
    with context.store.write() as session:
        workspace = workspaces.get_workspace(session, ws)
        authorize(caller, "delete", "files", workspace, {"path": path})
        files.delete_file(session, workspace, path)
    return Response(status_code=204)
