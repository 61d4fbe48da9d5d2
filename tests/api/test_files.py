"""Workspace files on a real server: API, limits, workspace folders, flows and remote runs."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from flowlink.workspaces.folder import read_folder, write_folder
from tests.access.helpers import user_with_token
from tests.conftest import LiveServer

BLOB = bytes(range(256)) * 4  # not UTF-8: a real binary file
WORKSPACE = "name: Files\nslug: fs\n"
USE_FILES = (
    "def handler(system, this, inputs):\n"
    "    text = system.file('config/greeting.txt').read_text()\n"
    "    blob = system.file('data/blob.bin').get()\n"
    "    system.file('out/result.txt').save(text.upper())\n"
    "    system.file('out/copy.bin').save(blob)\n"
    "    return this.success('ok', text=text, size=len(blob), files=system.files('out/'),\n"
    "                        exists=system.file('nope.txt').exists())\n"
)
TOO_BIG = "def handler(system, this, inputs):\n    system.file('big.bin').save(b'x' * 2048)\n"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def fs(live_server: LiveServer) -> LiveServer:
    files = {
        "workspace.yml": WORKSPACE,
        "flows/use.py": USE_FILES,
        "flows/too_big.py": TOO_BIG,
        "files/config/greeting.txt": _b64(b"hello files"),
        "files/data/blob.bin": _b64(BLOB),
    }
    response = live_server.client.post("/api/v1/workspaces/fs/apply", json={"files": files})
    assert response.status_code == 200, response.text
    assert response.json()["changes"]["files"] == ["+config/greeting.txt", "+data/blob.bin"]
    return live_server


def test_api_upload_download_list_delete(fs: LiveServer) -> None:
    url = "/api/v1/workspaces/fs/files"
    got = fs.client.get(f"{url}/data/blob.bin")
    assert got.status_code == 200 and got.content == BLOB
    assert got.headers["content-type"] == "application/octet-stream"
    created = fs.client.put(f"{url}/docs/readme.md", content=b"# hi\n")
    assert created.status_code == 201, created.text
    assert created.json()["size"] == 5 and created.json()["path"] == "docs/readme.md"
    assert fs.client.put(f"{url}/docs/readme.md", content=b"# hello\n").status_code == 200
    assert fs.client.get(f"{url}/docs/readme.md").text == "# hello\n"
    listed = fs.client.get(url).json()["items"]
    assert [f["path"] for f in listed] == ["config/greeting.txt", "data/blob.bin", "docs/readme.md"]
    assert "content" not in listed[0]
    assert fs.client.delete(f"{url}/docs/readme.md").status_code == 204
    assert fs.client.get(f"{url}/docs/readme.md").status_code == 404
    bad = fs.client.put(f"{url}/a/%2E%2E/b.txt", content=b"x")
    assert bad.status_code == 422, bad.text
    bad = fs.client.put(f"{url}/a/.hidden", content=b"x")
    assert bad.status_code == 422 and "invalid file path" in bad.json()["error"]["message"]
    events = fs.client.get(
        "/api/v1/workspaces/fs/events", params={"types": "files.updated"}
    ).json()["items"]
    assert {e["payload"]["path"] for e in events} >= {"docs/readme.md"}


def test_size_limits_are_413_and_write_nothing(
    fs: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "/api/v1/workspaces/fs/files"
    monkeypatch.setenv("FLOWLINK_FILE_MAX_BYTES", "1024")
    response = fs.client.put(f"{url}/big.bin", content=b"x" * 1025)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["details"] == {
        "field": "content",
        "path": "big.bin",
        "size": 1025,
        "limit": 1024,
    }
    assert "1024 bytes per file" in error["message"]
    monkeypatch.setenv("FLOWLINK_FILE_MAX_BYTES", str(10 * 1024 * 1024))
    monkeypatch.setenv("FLOWLINK_WORKSPACE_FILES_MAX_BYTES", str(len(BLOB) + 20))
    response = fs.client.put(f"{url}/more.bin", content=b"y" * 100)
    assert response.status_code == 413
    assert "per workspace" in response.json()["error"]["message"]
    assert fs.client.get(f"{url}/more.bin").status_code == 404
    # A flow that goes over the limit gets a clear error, naming the file and the limit.
    monkeypatch.setenv("FLOWLINK_FILE_MAX_BYTES", "1024")
    started = fs.client.post("/api/v1/workspaces/fs/executions", json={"flow": "too_big"}).json()
    ended = fs.wait_for("fs", started["id"])
    assert ended["status"] == "error"
    assert "file 'big.bin' is 2048 bytes; the limit is 1024 bytes per file" in str(ended["message"])


def test_roles_read_and_write_files(fs: LiveServer) -> None:
    viewer = user_with_token(fs.store, "vi", "fs", "viewer")
    editor = user_with_token(fs.store, "ed", "fs", "editor")
    url = "/api/v1/workspaces/fs/files/notes.txt"
    for token, status in ((viewer, 403), (editor, 201)):
        with httpx.Client(base_url=fs.url, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.put(url, content=b"n").status_code == status
            assert c.get("/api/v1/workspaces/fs/files/config/greeting.txt").content == (
                b"hello files"
            )


def test_flows_read_and_write_files(fs: LiveServer) -> None:
    started = fs.client.post("/api/v1/workspaces/fs/executions", json={"flow": "use"}).json()
    ended = fs.wait_for("fs", started["id"])
    assert ended["status"] == "success", ended
    assert ended["output_value"] == {
        "text": "hello files",
        "size": len(BLOB),
        "files": ["out/copy.bin", "out/result.txt"],
        "exists": False,
    }
    url = "/api/v1/workspaces/fs/files"
    assert fs.client.get(f"{url}/out/result.txt").content == b"HELLO FILES"
    assert fs.client.get(f"{url}/out/copy.bin").content == BLOB


def test_folder_apply_export_round_trip(fs: LiveServer, tmp_path: Path) -> None:
    exported = fs.client.get("/api/v1/workspaces/fs/export").json()["files"]
    assert base64.b64decode(exported["files/data/blob.bin"]) == BLOB
    folder = tmp_path / "ws"
    write_folder(folder, exported)
    assert (folder / "files" / "data" / "blob.bin").read_bytes() == BLOB
    assert (folder / "files" / "config" / "greeting.txt").read_text() == "hello files"
    (folder / "files" / "config" / "greeting.txt").write_bytes(b"changed")
    (folder / "files" / "new.txt").write_bytes(b"new")
    again = fs.client.post(
        "/api/v1/workspaces/fs/apply", json={"files": read_folder(folder)}
    ).json()
    assert again["changes"]["files"] == ["~config/greeting.txt", "+new.txt"]
    unchanged = fs.client.post(
        "/api/v1/workspaces/fs/apply", json={"files": read_folder(folder)}
    ).json()
    assert unchanged["changed"] is False
    bad = {"workspace.yml": WORKSPACE, "files/x.txt": "not base64!"}
    response = fs.client.post("/api/v1/workspaces/fs/apply", json={"files": bad})
    assert response.status_code == 422
    assert response.json()["error"]["details"]["file"] == "files/x.txt"
