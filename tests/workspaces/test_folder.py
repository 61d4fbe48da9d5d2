"""Tests for reading and writing workspace folders (flowlink.workspaces.folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowlink.workspaces.folder import read_folder, write_folder
from flowlink.workspaces.spec import SpecError, bundle_to_files, parse_bundle
from flowlink.workspaces.templating import render_config

from .test_spec import GREET, WORKSPACE_EXAMPLE


def make_folder(root: Path, files: dict[str, str | bytes]) -> Path:
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_bytes(content.encode("utf-8"))
    return root


def test_design_example_folder_end_to_end(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path / "my-workspace",
        {
            "workspace.yml": WORKSPACE_EXAMPLE,
            "flows/greet.py": GREET,
            "settings.yml": "api_token: abc\n",
            "pages/index.html": "<h1>hi</h1>\n",
        },
    )
    files = read_folder(folder)
    assert files == {
        "flows/greet.py": GREET,
        "pages/index.html": "<h1>hi</h1>\n",
        "settings.yml": "api_token: abc\n",
        "workspace.yml": WORKSPACE_EXAMPLE,
    }
    bundle = parse_bundle(files)
    config = render_config(bundle.spec.slug, bundle.spec.config_value, {})
    assert config["LOGIN_URL"] == "https://api.example.com/login"
    assert bundle.settings == {"api_token": "abc"}

    out = tmp_path / "exported"
    write_folder(out, bundle_to_files(bundle))
    assert read_folder(out) == files


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        read_folder(tmp_path / "nope")
    assert info.value.file == str(tmp_path / "nope")
    assert "not found" in info.value.message


def test_path_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(SpecError, match="not a folder"):
        read_folder(tmp_path / "f")
    with pytest.raises(SpecError, match="not a folder"):
        write_folder(tmp_path / "f", {"workspace.yml": "x"})


def test_missing_workspace_yml(tmp_path: Path) -> None:
    make_folder(tmp_path, {"flows/greet.py": GREET})
    with pytest.raises(SpecError) as info:
        read_folder(tmp_path)
    assert info.value.file == "workspace.yml"
    assert "missing workspace.yml" in info.value.message


@pytest.mark.parametrize(
    ("wrong", "right"), [("workspace.yaml", "workspace.yml"), ("settings.yaml", "settings.yml")]
)
def test_yaml_extension_hint(tmp_path: Path, wrong: str, right: str) -> None:
    make_folder(tmp_path, {"workspace.yml": WORKSPACE_EXAMPLE, wrong: "x: 1\n"})
    if wrong == "workspace.yaml":
        (tmp_path / "workspace.yml").unlink()
    with pytest.raises(SpecError) as info:
        read_folder(tmp_path)
    assert info.value.file == wrong
    assert f"rename {wrong} to {right}" in info.value.message


def test_non_utf8_file_names_file_and_line(tmp_path: Path) -> None:
    make_folder(
        tmp_path,
        {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": b"x = 1\ny = '\xff'\n"},
    )
    with pytest.raises(SpecError) as info:
        read_folder(tmp_path)
    error = info.value
    assert (error.file, error.line, error.column) == ("flows/greet.py", 2, 6)
    assert "not valid UTF-8" in error.message
    assert str(error).startswith("flows/greet.py:2:6: not valid UTF-8")


def test_non_utf8_workspace_yml(tmp_path: Path) -> None:
    make_folder(tmp_path, {"workspace.yml": b"name: caf\xe9\nslug: ab\n"})
    with pytest.raises(SpecError) as info:
        read_folder(tmp_path)
    assert (info.value.file, info.value.line) == ("workspace.yml", 1)


def test_bom_and_crlf(tmp_path: Path) -> None:
    crlf = WORKSPACE_EXAMPLE.replace("\n", "\r\n")
    make_folder(
        tmp_path,
        {
            "workspace.yml": b"\xef\xbb\xbf" + crlf.encode(),
            "flows/greet.py": GREET.replace("\n", "\r\n"),
        },
    )
    files = read_folder(tmp_path)
    assert files["workspace.yml"] == crlf
    bundle = parse_bundle(files)
    assert bundle.spec.slug == "test"
    assert bundle.spec.config_value["LOGIN_URL"] == "{{config.API_URL}}/login"


def test_ignored_and_included_files(tmp_path: Path) -> None:
    make_folder(
        tmp_path,
        {
            "workspace.yml": WORKSPACE_EXAMPLE,
            "flows/greet.py": GREET,
            "README.md": "docs",
            ".git/config": "x",
            ".gitignore": "x",
            "notes/todo.txt": "x",
            "flows/.hidden.py": "x",
            "flows/__pycache__/greet.cpython-311.pyc": b"\x00\xff",
            "flows/greet.py~": "backup",
            "pages/.DS_Store": b"\x00\xff",
        },
    )
    assert sorted(read_folder(tmp_path)) == ["flows/greet.py", "workspace.yml"]


def test_unexpected_files_under_flows_are_read_and_rejected(tmp_path: Path) -> None:
    make_folder(
        tmp_path,
        {
            "workspace.yml": WORKSPACE_EXAMPLE,
            "flows/greet.py": GREET,
            "flows/lib/helper.py": "x = 1\n",
        },
    )
    files = read_folder(tmp_path)
    assert "flows/lib/helper.py" in files
    with pytest.raises(SpecError) as info:
        parse_bundle(files)
    assert info.value.file == "flows/lib/helper.py"


def test_write_creates_dirs_and_removes_stale_files(tmp_path: Path) -> None:
    folder = make_folder(
        tmp_path / "ws",
        {
            "workspace.yml": "old",
            "flows/greet.py": "old",
            "flows/stale.py": "old",
            "flows/notes.txt": "keep",
            "flows/.hidden.py": "keep",
            "pages/old.html": "stale: pages are part of the workspace",
            "pages/old.yml": "title: stale\n",
            "pages/notes.txt": "keep",
            "README.md": "keep",
            "settings.yml": "keep: 1\n",
        },
    )
    write_folder(
        folder,
        {"workspace.yml": WORKSPACE_EXAMPLE, "flows/greet.py": GREET, "pages/new.html": "<p/>"},
    )
    assert (folder / "workspace.yml").read_text() == WORKSPACE_EXAMPLE
    assert (folder / "flows/greet.py").read_text() == GREET
    assert (folder / "pages/new.html").read_text() == "<p/>"
    assert not (folder / "flows/stale.py").exists()
    assert not (folder / "pages/old.html").exists()
    assert not (folder / "pages/old.yml").exists()
    for kept in (
        "flows/notes.txt",
        "flows/.hidden.py",
        "README.md",
        "settings.yml",
        "pages/notes.txt",
    ):
        assert (folder / kept).exists(), kept


def test_write_into_new_nested_folder(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    write_folder(target, {"workspace.yml": "name: x\nslug: ab\n", "flows/f.py": ""})
    assert (target / "flows" / "f.py").read_text() == ""
    assert read_folder(target) == {"flows/f.py": "", "workspace.yml": "name: x\nslug: ab\n"}


def test_write_keeps_bytes_exact_and_skips_unchanged(tmp_path: Path) -> None:
    files = {"workspace.yml": "name: x\r\nslug: ab\r\n", "flows/f.py": "print('é')\n"}
    write_folder(tmp_path, files)
    assert (tmp_path / "workspace.yml").read_bytes() == b"name: x\r\nslug: ab\r\n"
    past = 1_000_000_000
    os.utime(tmp_path / "flows/f.py", (past, past))
    write_folder(tmp_path, files)
    assert (tmp_path / "flows/f.py").stat().st_mtime == past  # unchanged file not rewritten
    write_folder(tmp_path, {**files, "flows/f.py": "changed\n"})
    assert (tmp_path / "flows/f.py").read_text() == "changed\n"
    assert not [p for p in tmp_path.rglob("*.tmp")]


@pytest.mark.parametrize(
    "bad", ["../evil.py", "flows/../../evil.py", "/etc/passwd", "flows/a/b.py", "x.txt"]
)
def test_write_refuses_paths_outside_the_layout(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpecError) as info:
        write_folder(tmp_path / "ws", {"workspace.yml": "x", bad: "x"})
    assert info.value.file == bad
    assert not (tmp_path / "ws").exists()  # nothing written


def test_write_refuses_unencodable_text(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as info:
        write_folder(tmp_path, {"workspace.yml": "bad \udc80"})
    assert info.value.file == "workspace.yml"


def test_export_then_apply_is_stable(tmp_path: Path) -> None:
    files = {
        "workspace.yml": WORKSPACE_EXAMPLE,
        "flows/greet.py": GREET,
        "settings.yml": "a: [1, 2]\n",
    }
    bundle = parse_bundle(files)
    write_folder(tmp_path, bundle_to_files(bundle))
    again = parse_bundle(read_folder(tmp_path))
    assert again == bundle
