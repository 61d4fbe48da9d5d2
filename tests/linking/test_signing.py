"""RFC 9421 signatures of link exchanges: round trips, every rejection reason, and interop.

The interop test rebuilds the signature base by hand from the header fields and verifies the
signature with the ``openssl`` command line, so compatibility does not rest on one library.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)

from flowlink.linking import keys, signing
from tests.linking.conftest import KeyMaker, public_pem_of

URL = "https://controller.example.com/api/v1/workspaces/ops/sync_config/intranet/sync"
BODY = json.dumps({"messages": [{"id": "m1", "type": "ack", "ids": []}]}).encode()


def signed_request(key_path: Path, body: bytes = BODY, **kwargs: object) -> httpx.Headers:
    key = keys.load_private_key(key_path.read_text())
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(key, "POST", URL, headers, body, **kwargs)  # type: ignore[arg-type]
    return headers


def remote_keys(*paths: Path) -> dict[str, object]:
    loaded = keys.load_public_keys("".join(public_pem_of(p) for p in paths))
    return {keys.fingerprint(k): k for k in loaded}


def test_request_round_trip(make_key: KeyMaker) -> None:
    path = make_key("openssl-genrsa")
    headers = signed_request(path)
    verified = signing.verify_request(remote_keys(path), "POST", URL, headers, BODY)  # type: ignore[arg-type]
    assert verified.key_id == keys.fingerprint(keys.load_private_key(path.read_text()))
    assert verified.nonce
    assert headers["content-digest"].startswith("sha-512=:")
    assert 'alg="rsa-pss-sha512"' in headers["signature-input"]


def test_response_round_trip_is_bound_to_its_request(make_key: KeyMaker) -> None:
    path = make_key("ssh-keygen-openssh")
    key = keys.load_private_key(path.read_text())
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_response(key, 200, headers, BODY, request_method="POST", request_url=URL)
    trusted = {keys.fingerprint(key): key.public_key()}
    signing.verify_response(trusted, 200, headers, BODY, request_method="POST", request_url=URL)
    with pytest.raises(signing.SignatureRejected) as info:
        signing.verify_response(
            trusted, 200, headers, BODY, request_method="POST", request_url=URL + "?other"
        )
    assert info.value.reason == "bad_signature"


def test_rotation_accepts_either_configured_key(make_key: KeyMaker) -> None:
    old, new = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    trusted = remote_keys(old, new)
    for path in (old, new):
        signing.verify_request(trusted, "POST", URL, signed_request(path), BODY)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", "unsigned"),
        ("wrong_key", "unknown_key"),
        ("tampered_body", "digest_mismatch"),
        ("tampered_digest", "bad_signature"),
        ("other_url", "bad_signature"),
        ("other_method", "bad_signature"),
        ("stale", "stale"),
        ("future", "future"),
        ("garbage_input", "malformed"),
    ],
)
def test_each_rejection_names_its_reason(make_key: KeyMaker, case: str, reason: str) -> None:
    path, other = make_key("openssl-genrsa"), make_key("ssh-keygen-pem")
    trusted = remote_keys(path)
    method, url, body = "POST", URL, BODY
    headers = signed_request(other if case == "wrong_key" else path)
    if case == "unsigned":
        del headers["signature"]
    elif case == "tampered_body":
        body = BODY.replace(b"m1", b"m2")
    elif case == "tampered_digest":
        body = BODY.replace(b"m1", b"m2")
        fake = base64.b64encode(__import__("hashlib").sha512(body).digest()).decode()
        headers["content-digest"] = f"sha-512=:{fake}:"
    elif case == "other_url":
        url = URL.replace("intranet", "other")
    elif case == "other_method":
        method = "PUT"
    elif case == "stale":
        headers = signed_request(path, created=datetime.now(UTC) - timedelta(minutes=6))
    elif case == "future":
        headers = signed_request(path, created=datetime.now(UTC) + timedelta(minutes=2))
    elif case == "garbage_input":
        headers["signature-input"] = "not a dictionary ((("
    with pytest.raises(signing.SignatureRejected) as info:
        signing.verify_request(trusted, method, url, headers, body)  # type: ignore[arg-type]
    assert info.value.reason == reason


def openssl_verify(folder: Path) -> str:
    """``openssl dgst`` verification of sig.bin over base.txt with pub.pem (RSA-PSS, SHA-512)."""
    result = subprocess.run(
        [
            "openssl",
            "dgst",
            "-sha512",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:64",
            "-verify",
            str(folder / "pub.pem"),
            "-signature",
            str(folder / "sig.bin"),
            str(folder / "base.txt"),
        ],
        capture_output=True,
        text=True,
    )
    return (result.stdout + result.stderr).strip().splitlines()[0]


def test_openssl_alone_verifies_a_real_signed_request(make_key: KeyMaker, tmp_path: Path) -> None:
    path = make_key("openssl-genpkey")
    headers = signed_request(path)
    # Rebuild the RFC 9421 signature base from the fields, without the signing library.
    signature_input = headers["signature-input"]
    params = signature_input.split("=", 1)[1]  # 'flowlink=("@method" ...);created=...'
    components = re.match(r"\(([^)]*)\)", params)
    assert components is not None
    values = {
        '"@method"': "POST",
        '"@target-uri"': URL,
        '"content-digest"': headers["content-digest"],
        '"content-type"': headers["content-type"],
    }
    lines = [f"{name}: {values[name]}" for name in components.group(1).split()]
    lines.append(f'"@signature-params": {params}')
    (tmp_path / "base.txt").write_bytes("\n".join(lines).encode())
    signature = headers["signature"].split("=", 1)[1].strip(":")
    (tmp_path / "sig.bin").write_bytes(base64.b64decode(signature))
    (tmp_path / "pub.pem").write_text(public_pem_of(path))
    assert openssl_verify(tmp_path) == "Verified OK"
    # And a changed base does not verify.
    (tmp_path / "base.txt").write_bytes("\n".join(lines).replace("POST", "PUT").encode())
    assert openssl_verify(tmp_path) == "Verification failure"


class _LibraryKeys(HTTPSignatureKeyResolver):
    """Keys for the ``http_message_signatures`` signer and verifier."""

    def __init__(self, private: Any = None, public: Any = None) -> None:
        self.private, self.public = private, public

    def resolve_private_key(self, key_id: str) -> Any:
        return self.private

    def resolve_public_key(self, key_id: str) -> Any:
        return self.public


class _Digest(ContentDigest):
    algorithm = "sha-512"


class _LibrarySigner(HTTPMessageSigner):
    content_digest_class = _Digest


class _LibraryVerifier(HTTPMessageVerifier):
    content_digest_class = _Digest


def _previous_version_sign(
    key: Any, message: signing.SignedRequest | signing.SignedResponse, components: tuple[str, ...]
) -> None:
    """How the previous version signed: with the ``http_message_signatures`` signer."""
    _LibrarySigner(
        signature_algorithm=algorithms.RSA_PSS_SHA512, key_resolver=_LibraryKeys(private=key)
    ).sign(
        message,
        key_id=keys.fingerprint(key),
        created=datetime.now(UTC),
        nonce="n-" + base64.b64encode(b"previous").decode().rstrip("="),
        label=signing.LABEL,
        tag=signing.TAG,
        covered_component_ids=components,
        body=BODY,
    )


@pytest.mark.parametrize("url", [URL, "http://LOCALHOST:80/api/v1/workspaces/a/sync_config/b/sync"])
def test_signatures_interoperate_with_the_previous_version(make_key: KeyMaker, url: str) -> None:
    """Requests and answers signed here verify with the general RFC 9421 verifier the
    previous version used, and what that version signed verifies here."""
    key = keys.load_private_key(make_key("openssl-genrsa").read_text())
    trusted = {keys.fingerprint(key): key.public_key()}
    library = _LibraryVerifier(
        signature_algorithm=algorithms.RSA_PSS_SHA512,
        key_resolver=_LibraryKeys(public=key.public_key()),
    )
    # this version signs, the previous one verifies
    request = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(key, "POST", url, request, BODY)
    library.verify(signing.SignedRequest("POST", url, request), body=BODY)
    answer = httpx.Headers({"content-type": "application/json"})
    signing.sign_response(key, 200, answer, BODY, request_method="POST", request_url=url)
    to = signing.SignedRequest("POST", url, httpx.Headers())
    library.verify(signing.SignedResponse(200, answer, to), body=BODY)
    # the previous version signs, this one verifies
    request = httpx.Headers({"content-type": "application/json"})
    _previous_version_sign(
        key, signing.SignedRequest("POST", url, request), signing.REQUEST_COMPONENTS
    )
    assert signing.verify_request(trusted, "POST", url, request, BODY).nonce.startswith("n-")
    answer = httpx.Headers({"content-type": "application/json"})
    _previous_version_sign(
        key, signing.SignedResponse(200, answer, to), signing.RESPONSE_COMPONENTS
    )
    signing.verify_response(trusted, 200, answer, BODY, request_method="POST", request_url=url)
    # a signature over other bytes fails in both forms of Signature-Input
    for form in (answer["signature-input"], answer["signature-input"].replace(";", "; ", 1)):
        answer["signature-input"] = form
        with pytest.raises(signing.SignatureRejected) as info:
            signing.verify_response(
                trusted, 200, answer, BODY, request_method="POST", request_url=url + "x"
            )
        assert info.value.reason == "bad_signature"
