"""RSA keys of workspace links: parsing every accepted format, fingerprints, encryption at rest.

Accepted: PEM PKCS#1 (``openssl genrsa``, ``ssh-keygen -m PEM``), PEM PKCS#8
(``openssl genpkey``) and OpenSSH (``ssh-keygen -t rsa``) private keys; SPKI PEM, PKCS#1
PEM and ``ssh-rsa`` public keys. At least 2048 bits. A rejected key gets an ``Invalid``
error naming the field and what is wrong with it, and never echoes the key itself.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from flowlink import atrest
from flowlink.errors import Invalid

MIN_RSA_BITS = 2048
DEFAULT_RSA_BITS = 3072
MAX_PUBLIC_KEYS = 2  # the current key and the next one, while keys rotate
_PEM_BLOCK = re.compile(r"-----BEGIN ([A-Z0-9 ]+)-----\s.*?-----END \1-----", re.DOTALL)
_SSH_PUBLIC_LINE = re.compile(r"^(ssh-[a-z0-9-]+|ecdsa-[a-z0-9-]+)\s+[A-Za-z0-9+/=]+(\s.*)?$")


def _type_name(key: object) -> str:
    for kind, name in (
        ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC key"),
        ((ed25519.Ed25519PrivateKey, ed25519.Ed25519PublicKey), "an Ed25519 key"),
        ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448 key"),
        ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA key"),
    ):
        if isinstance(key, kind):
            return name
    return f"a {type(key).__name__}"


def _invalid(field: str, message: str) -> Invalid:
    return Invalid(f"{field}: {message}", details={"field": field})


def _check_rsa_size(field: str, key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> None:
    if key.key_size < MIN_RSA_BITS:
        raise _invalid(
            field, f"the RSA key has {key.key_size} bits; at least {MIN_RSA_BITS} are required"
        )


def load_private_key(
    text: str, *, field: str = "own_private_key", checked: bool = False
) -> rsa.RSAPrivateKey:
    """Parse an RSA private key in any accepted format, or raise ``Invalid`` saying why.

    ``checked``: the key was fully checked when it was stored (a key this server keeps), so
    the costly RSA consistency check (about 50 ms per key) is skipped.
    """
    if not isinstance(text, str) or not text.strip():
        raise _invalid(field, "no key given")
    data = text.strip().encode()
    if b"PUBLIC KEY-----" in data or _SSH_PUBLIC_LINE.match(text.strip()):
        raise _invalid(field, "this is a public key; a private key is expected here")
    if b"ENCRYPTED" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise _invalid(field, "the private key is protected by a passphrase; give it unencrypted")
    loaded: object
    try:
        if data.startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            loaded = serialization.load_ssh_private_key(data, password=None)
        else:
            loaded = serialization.load_pem_private_key(
                data, password=None, unsafe_skip_rsa_key_validation=checked
            )
    except TypeError:
        raise _invalid(
            field, "the private key is protected by a passphrase; give it unencrypted"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(
            field,
            "not a readable private key: expected PEM (PKCS#1 or PKCS#8) or OpenSSH format",
        ) from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise _invalid(field, f"an RSA key is required, this is {_type_name(loaded)}")
    _check_rsa_size(field, loaded)
    return loaded


def _load_one_public(block: str, field: str) -> rsa.RSAPublicKey:
    data = block.strip().encode()
    if b"PRIVATE KEY-----" in data:
        raise _invalid(field, "this is a private key; only the remote's public key belongs here")
    loaded: object
    try:
        if data.startswith(b"-----BEGIN"):
            loaded = serialization.load_pem_public_key(data)
        else:
            loaded = serialization.load_ssh_public_key(data)
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid(
            field,
            "not a readable public key: expected PEM (SPKI or PKCS#1) or an OpenSSH"
            " 'ssh-rsa ...' line",
        ) from None
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise _invalid(field, f"an RSA key is required, this is {_type_name(loaded)}")
    _check_rsa_size(field, loaded)
    return loaded


def load_public_keys(text: str, *, field: str = "remote_public_key") -> list[rsa.RSAPublicKey]:
    """Parse one or two RSA public keys (two while keys rotate)."""
    if not isinstance(text, str) or not text.strip():
        raise _invalid(field, "no key given")
    if "PRIVATE KEY-----" in text:
        raise _invalid(field, "this is a private key; only the remote's public key belongs here")
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(text)]
    rest = _PEM_BLOCK.sub("", text)
    blocks += [line for line in rest.splitlines() if line.strip()]
    if not blocks:
        raise _invalid(field, "no key found")
    if len(blocks) > MAX_PUBLIC_KEYS:
        raise _invalid(
            field, f"{len(blocks)} keys given; at most {MAX_PUBLIC_KEYS} (current and next)"
        )
    keys = [_load_one_public(block, field) for block in blocks]
    if len({fingerprint(k) for k in keys}) != len(keys):
        raise _invalid(field, "the same key is given twice")
    return keys


def fingerprint(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str:
    """``SHA256:<base64>`` of the key, the same string ``ssh-keygen -lf`` shows."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    line = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def public_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> str:
    """The public key as SPKI PEM."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def private_pem(key: rsa.RSAPrivateKey) -> str:
    """The private key as unencrypted PKCS#8 PEM (for storage, encrypted at rest)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass(frozen=True)
class KeyPair:
    """A freshly generated key pair."""

    private_pem: str
    public_pem: str
    fingerprint: str


def generate_key_pair(bits: int = DEFAULT_RSA_BITS) -> KeyPair:
    """Generate an RSA key pair for one end of a link."""
    if bits < MIN_RSA_BITS:
        raise Invalid(f"bits: at least {MIN_RSA_BITS}", details={"field": "bits"})
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    return KeyPair(
        private_pem=private_pem(key), public_pem=public_pem(key), fingerprint=fingerprint(key)
    )


def encrypt_at_rest(secret_key: str, plaintext: str) -> str:
    """Encrypt a secret (a private key) with a key derived from the server's secret key."""
    return atrest.encrypt(secret_key, plaintext, purpose=atrest.PRIVATE_KEYS)


def decrypt_at_rest(secret_key: str, token: str) -> str:
    """Decrypt what ``encrypt_at_rest`` made; a wrong server secret key is a clear error."""
    return atrest.decrypt(
        secret_key, token, purpose=atrest.PRIVATE_KEYS, what="a stored private key"
    )
