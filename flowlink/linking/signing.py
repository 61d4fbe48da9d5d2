"""RFC 9421 HTTP Message Signatures for link exchanges (``rsa-pss-sha512``), requests and responses.

Covered: ``@method``, ``@target-uri``, ``content-digest`` (RFC 9530, sha-512) and ``content-type``
(responses: ``@status`` and the request's method and target URI with ``;req``). Parameters:
``created``, ``nonce``, ``keyid`` (the SHA-256 fingerprint of the signer's public key),
``alg`` and ``tag="flowlink-sync"``. Verification says *why* a message is rejected, so operators
can act on it; replayed nonces are the caller's to check (they need the store).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import http_sf
import httpx
from cryptography.hazmat.primitives.asymmetric import rsa
from http_message_signatures import (
    ContentDigest,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)

from flowlink.linking.keys import fingerprint
from flowlink.timestamps import format_timestamp

MAX_AGE = timedelta(minutes=5)
CLOCK_SKEW = timedelta(seconds=5)
LABEL = "flowlink"
TAG = "flowlink-sync"  # signed application tag: this signature is for the link protocol
REQUEST_COMPONENTS = ("@method", "@target-uri", "content-digest", "content-type")
RESPONSE_COMPONENTS = (
    "@status",
    '"@method";req',
    '"@target-uri";req',
    "content-digest",
    "content-type",
)
REASONS = (
    "unsigned",
    "malformed",
    "unknown_key",
    "stale",
    "future",
    "digest_mismatch",
    "bad_signature",
)


class SignatureRejected(Exception):
    """A message whose signature does not hold; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class _Sha512Digest(ContentDigest):
    algorithm = "sha-512"


class _Signer(HTTPMessageSigner):
    content_digest_class = _Sha512Digest


class _Verifier(HTTPMessageVerifier):
    content_digest_class = _Sha512Digest
    max_clock_skew = CLOCK_SKEW


class _Keys(HTTPSignatureKeyResolver):
    def __init__(
        self,
        public: Mapping[str, rsa.RSAPublicKey] | None = None,
        private: Mapping[str, rsa.RSAPrivateKey] | None = None,
    ) -> None:
        self.public = dict(public or {})
        self.private = dict(private or {})

    def resolve_public_key(self, key_id: str) -> rsa.RSAPublicKey | None:
        return self.public.get(key_id)

    def resolve_private_key(self, key_id: str) -> rsa.RSAPrivateKey:
        return self.private[key_id]


@dataclass
class SignedRequest:
    """The parts of an HTTP request that a signature covers."""

    method: str
    url: str
    headers: httpx.Headers


@dataclass
class SignedResponse:
    """The parts of an HTTP response that a signature covers, with its request."""

    status_code: int
    headers: httpx.Headers
    request: SignedRequest


@dataclass(frozen=True)
class Verified:
    """What a valid signature vouches for."""

    key_id: str
    created: datetime
    nonce: str


def _sign(
    message: SignedRequest | SignedResponse,
    key: rsa.RSAPrivateKey,
    body: bytes,
    components: tuple[str, ...],
    created: datetime | None,
    nonce: str | None,
) -> None:
    key_id = fingerprint(key)
    signer = _Signer(
        signature_algorithm=algorithms.RSA_PSS_SHA512,
        key_resolver=_Keys(private={key_id: key}),
    )
    signer.sign(
        message,
        key_id=key_id,
        created=created or datetime.now(UTC),
        nonce=nonce or secrets.token_urlsafe(16),
        label=LABEL,
        tag=TAG,
        covered_component_ids=components,
        body=body,
    )


def sign_request(
    key: rsa.RSAPrivateKey,
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
    *,
    created: datetime | None = None,
    nonce: str | None = None,
) -> None:
    """Add ``Content-Digest``, ``Signature-Input`` and ``Signature`` to a request's headers."""
    _sign(SignedRequest(method, url, headers), key, body, REQUEST_COMPONENTS, created, nonce)


def sign_response(
    key: rsa.RSAPrivateKey,
    status_code: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    request_method: str,
    request_url: str,
    created: datetime | None = None,
    nonce: str | None = None,
) -> None:
    """Sign a response; it covers the request's method and target URI too (``;req``)."""
    request = SignedRequest(request_method, request_url, httpx.Headers())
    message = SignedResponse(status_code, headers, request)
    _sign(message, key, body, RESPONSE_COMPONENTS, created, nonce)


def _signature_input(headers: httpx.Headers) -> tuple[list[str], dict[str, Any]]:
    """The covered components and parameters of the one signature, or SignatureRejected."""
    if "signature-input" not in headers or "signature" not in headers:
        raise SignatureRejected("unsigned", "no Signature and Signature-Input header fields")
    try:
        parsed: Any = http_sf.parse(headers["signature-input"].encode(), tltype="dictionary")
    except Exception:
        raise SignatureRejected("malformed", "Signature-Input is not a valid dictionary") from None
    if LABEL not in parsed or len(parsed) != 1:
        raise SignatureRejected("malformed", f"expected exactly one signature labelled {LABEL!r}")
    inner, params = parsed[LABEL]
    if not isinstance(inner, list):
        raise SignatureRejected("malformed", "Signature-Input member is not an inner list")
    components = [str(name) + "".join(f";{k}" for k in item_params) for name, item_params in inner]
    return components, dict(params)


def _check(
    headers: httpx.Headers,
    body: bytes,
    keys: Mapping[str, rsa.RSAPublicKey],
    expected: tuple[str, ...],
) -> dict[str, Any]:
    components, params = _signature_input(headers)
    wanted = [c.replace('"', "") for c in expected]
    if sorted(components) != sorted(wanted):
        raise SignatureRejected(
            "malformed", f"covered components {components} are not the required {wanted}"
        )
    for name in ("created", "nonce", "keyid"):
        if name not in params:
            raise SignatureRejected("malformed", f"the signature has no {name!r} parameter")
    if params.get("tag") != TAG:
        raise SignatureRejected("malformed", f"the signature is not tagged {TAG!r}")
    if params.get("alg", "rsa-pss-sha512") != "rsa-pss-sha512":
        raise SignatureRejected("malformed", f"algorithm {params['alg']!r} is not rsa-pss-sha512")
    if params["keyid"] not in keys:
        raise SignatureRejected(
            "unknown_key",
            f"signed with key {params['keyid']}, which is not a configured remote public key",
        )
    if not isinstance(params["created"], int):
        raise SignatureRejected("malformed", "'created' is not an integer")
    created = datetime.fromtimestamp(params["created"], UTC)
    current = datetime.now(UTC)
    if created > current + CLOCK_SKEW:
        raise SignatureRejected("future", f"created {format_timestamp(created)} lies in the future")
    if created < current - MAX_AGE:
        raise SignatureRejected(
            "stale",
            f"created {format_timestamp(created)} is older than {int(MAX_AGE.total_seconds())} s",
        )
    expected_digest = "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"
    if not hmac.compare_digest(headers.get("content-digest", ""), expected_digest):
        raise SignatureRejected("digest_mismatch", "Content-Digest does not match the body")
    return params


def verify_request(
    keys: Mapping[str, rsa.RSAPublicKey],
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
) -> Verified:
    """Verify a signed request against the remote's public keys (by fingerprint)."""
    params = _check(headers, body, keys, REQUEST_COMPONENTS)
    _verify(SignedRequest(method, url, headers), keys, body)
    return Verified(
        params["keyid"], datetime.fromtimestamp(params["created"], UTC), params["nonce"]
    )


def verify_response(
    keys: Mapping[str, rsa.RSAPublicKey],
    status_code: int,
    headers: httpx.Headers,
    body: bytes,
    *,
    request_method: str,
    request_url: str,
) -> Verified:
    """Verify a signed response to a request we sent."""
    params = _check(headers, body, keys, RESPONSE_COMPONENTS)
    request = SignedRequest(request_method, request_url, httpx.Headers())
    _verify(SignedResponse(status_code, headers, request), keys, body)
    return Verified(
        params["keyid"], datetime.fromtimestamp(params["created"], UTC), params["nonce"]
    )


def _verify(
    message: SignedRequest | SignedResponse,
    keys: Mapping[str, rsa.RSAPublicKey],
    body: bytes,
) -> None:
    verifier = _Verifier(signature_algorithm=algorithms.RSA_PSS_SHA512, key_resolver=_Keys(keys))
    try:
        verifier.verify(message, max_age=MAX_AGE, expect_label=LABEL, expect_tag=TAG, body=body)
    except InvalidSignature as exc:
        raise SignatureRejected("bad_signature", f"the signature does not verify ({exc})") from None
