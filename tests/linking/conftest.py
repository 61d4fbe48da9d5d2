"""Keys made by the real tools users have: ``openssl`` and ``ssh-keygen``."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

KeyMaker = Callable[[str], Path]


@pytest.fixture(scope="session")
def make_key(tmp_path_factory: pytest.TempPathFactory) -> KeyMaker:
    """Make a private key file with a named recipe; cached per session."""
    folder = tmp_path_factory.mktemp("keys")
    made: dict[str, Path] = {}
    recipes: dict[str, list[list[str]]] = {
        "openssl-genrsa": [["openssl", "genrsa", "-traditional", "-out", "{f}", "2048"]],
        "openssl-genpkey": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "{f}",
            ]
        ],
        "ssh-keygen-pem": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "", "-f", "{f}"]
        ],
        "ssh-keygen-openssh": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", "{f}"]
        ],
        "ssh-keygen-ed25519": [["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", "{f}"]],
        "openssl-ec": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "{f}",
            ]
        ],
        "openssl-1024": [["openssl", "genrsa", "-traditional", "-out", "{f}", "1024"]],
        "openssl-encrypted": [
            [
                "openssl",
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-aes-256-cbc",
                "-pass",
                "pass:secret",
                "-out",
                "{f}",
            ]
        ],
        "ssh-keygen-encrypted": [
            ["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "pw", "-f", "{f}"]
        ],
    }

    def make(recipe: str) -> Path:
        if recipe not in made:
            path = folder / recipe
            for command in recipes[recipe]:
                subprocess.run(
                    [part.format(f=path) for part in command], check=True, capture_output=True
                )
            made[recipe] = path
        return made[recipe]

    return make


def public_pem_of(private: Path) -> str:
    """The SPKI PEM public key of a private key file, made by openssl."""
    return subprocess.run(
        ["openssl", "pkey", "-in", str(private), "-pubout"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
