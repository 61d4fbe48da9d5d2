"""``flowlink keys generate`` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from flowlink.linking import keys


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flowlink.cli.main", "keys", "generate", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_generate_writes_a_usable_pair(tmp_path: Path) -> None:
    target = tmp_path / "links" / "intranet"
    result = run(str(target), "--bits", "2048", "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    private = keys.load_private_key(target.read_text())
    (public,) = keys.load_public_keys(Path(shown["public"]).read_text())
    assert keys.fingerprint(private) == keys.fingerprint(public) == shown["fingerprint"]
    # ssh-keygen reads the PEM key and shows the same fingerprint.
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(target)], capture_output=True, text=True, check=True
    ).stdout
    assert shown["fingerprint"] in listed
    again = run(str(target))
    assert again.returncode == 1 and "--force" in again.stderr
    assert "PRIVATE KEY" not in result.stdout + result.stderr


def test_too_small_is_refused(tmp_path: Path) -> None:
    result = run(str(tmp_path / "k"), "--bits", "1024")
    assert result.returncode == 1 and "at least 2048" in result.stderr
    assert not (tmp_path / "k").exists()
