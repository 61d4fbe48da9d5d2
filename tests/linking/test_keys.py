"""Link keys in every format users bring; clear errors for the rest; encryption at rest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from flowlink.errors import Invalid
from flowlink.linking import keys
from flowlink.linking.service import private_key_of
from flowlink.store.models import SyncConfig
from tests.linking.conftest import KeyMaker, public_pem_of

GOOD = ["openssl-genrsa", "openssl-genpkey", "ssh-keygen-pem", "ssh-keygen-openssh"]


@pytest.mark.parametrize("recipe", GOOD)
def test_private_keys_of_every_accepted_format_load(make_key: KeyMaker, recipe: str) -> None:
    path = make_key(recipe)
    key = keys.load_private_key(path.read_text())
    assert key.key_size >= 2048
    # The fingerprint is the one ssh-keygen shows for the same key.
    shown = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(path)], check=True, capture_output=True, text=True
    ).stdout.split()[1]
    assert keys.fingerprint(key) == shown


@pytest.mark.parametrize("recipe", GOOD)
def test_public_keys_load_as_pem_and_ssh_lines(make_key: KeyMaker, recipe: str) -> None:
    path = make_key(recipe)
    private = keys.load_private_key(path.read_text())
    pem = keys.load_public_keys(
        public_pem_of(path) if "openssl" in recipe else keys.public_pem(private)
    )
    assert [keys.fingerprint(k) for k in pem] == [keys.fingerprint(private)]
    if recipe.startswith("ssh-keygen"):
        line = Path(str(path) + ".pub").read_text()
        (loaded,) = keys.load_public_keys(line)
        assert keys.fingerprint(loaded) == keys.fingerprint(private)


def test_two_public_keys_for_rotation(make_key: KeyMaker) -> None:
    a, b = make_key("openssl-genrsa"), make_key("ssh-keygen-openssh")
    text = public_pem_of(a) + Path(str(b) + ".pub").read_text()
    loaded = keys.load_public_keys(text)
    assert len(loaded) == 2
    with pytest.raises(Invalid, match="same key is given twice"):
        keys.load_public_keys(public_pem_of(a) * 2)
    three = text + public_pem_of(make_key("openssl-genpkey"))
    with pytest.raises(Invalid, match="at most 2"):
        keys.load_public_keys(three)


@pytest.mark.parametrize(
    ("recipe", "needle"),
    [
        ("ssh-keygen-ed25519", "an RSA key is required, this is an Ed25519 key"),
        ("openssl-ec", "an RSA key is required, this is an EC key"),
        ("openssl-1024", "1024 bits; at least 2048"),
        ("openssl-encrypted", "passphrase"),
        ("ssh-keygen-encrypted", "passphrase"),
    ],
)
def test_bad_private_keys_say_which(make_key: KeyMaker, recipe: str, needle: str) -> None:
    text = make_key(recipe).read_text()
    with pytest.raises(Invalid) as info:
        keys.load_private_key(text)
    assert needle in info.value.message
    assert info.value.details["field"] == "own_private_key"
    assert text.strip().splitlines()[1] not in info.value.message  # never echoes the key


def test_public_key_given_as_private_and_the_reverse(make_key: KeyMaker) -> None:
    path = make_key("ssh-keygen-openssh")
    with pytest.raises(Invalid, match="this is a public key"):
        keys.load_private_key(Path(str(path) + ".pub").read_text())
    with pytest.raises(Invalid, match="this is a public key"):
        keys.load_private_key(public_pem_of(make_key("openssl-genrsa")))
    with pytest.raises(Invalid, match="this is a private key"):
        keys.load_public_keys(path.read_text(), field="remote_public_key")


@pytest.mark.parametrize(
    "text",
    ["", "   ", "not a key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_garbage_is_rejected_clearly(text: str) -> None:
    with pytest.raises(Invalid) as info:
        keys.load_private_key(text)
    assert info.value.message.startswith("own_private_key: ")


def test_generated_pair_and_encryption_at_rest() -> None:
    pair = keys.generate_key_pair(2048)
    private = keys.load_private_key(pair.private_pem)
    assert keys.fingerprint(private) == pair.fingerprint
    stored = keys.encrypt_at_rest("server-secret", pair.private_pem)
    assert "PRIVATE KEY" not in stored
    assert keys.decrypt_at_rest("server-secret", stored) == pair.private_pem
    with pytest.raises(ValueError, match="FLOWLINK_SECRET_KEY"):
        keys.decrypt_at_rest("another-secret", stored)


def test_links_that_store_the_same_key_share_one_parsed_key(make_key: KeyMaker) -> None:
    # Each stored copy is sealed apart (another token each time), yet one parsed key serves
    # them all; another key, or the same token under another server secret, is its own.
    one, other = make_key("openssl-genrsa"), make_key("openssl-genpkey")

    def stored(path: Path, secret: str = "s1") -> SyncConfig:
        return SyncConfig(own_private_key=keys.encrypt_at_rest(secret, path.read_text()))

    first, second = stored(one), stored(one)
    assert first.own_private_key != second.own_private_key
    shared = private_key_of(first, "s1")
    assert private_key_of(second, "s1") is shared
    assert private_key_of(stored(other), "s1") is not shared
    assert keys.fingerprint(private_key_of(stored(one, "s2"), "s2").public_key()) == (
        keys.fingerprint(shared.public_key())
    )
    with pytest.raises(ValueError):  # a token sealed under another secret does not open
        private_key_of(first, "s2")
