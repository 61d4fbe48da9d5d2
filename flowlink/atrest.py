"""Encryption at rest with a key derived from the server's secret key (Fernet, HKDF-SHA256).

Used for the private keys of sync configs and for secret settings; each use derives its own
key (``purpose``), so a value encrypted for one use cannot be decrypted as another.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PRIVATE_KEYS = "flowlink private keys at rest"
SECRET_SETTINGS = "flowlink secret settings at rest"


def _fernet(secret_key: str, purpose: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose.encode()).derive(
        secret_key.encode()
    )
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(secret_key: str, plaintext: str, *, purpose: str) -> str:
    """Encrypt ``plaintext`` with a key derived from the server's secret key for ``purpose``."""
    return _fernet(secret_key, purpose).encrypt(plaintext.encode()).decode()


def decrypt(secret_key: str, token: str, *, purpose: str, what: str) -> str:
    """Decrypt what :func:`encrypt` made; a wrong server secret key is a clear ``ValueError``."""
    try:
        return _fernet(secret_key, purpose).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError(
            f"cannot decrypt {what}: FLOWLINK_SECRET_KEY (or the key file) is not the one it"
            " was stored with"
        ) from None
