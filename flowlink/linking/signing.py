"""RFC 9421 HTTP Message Signatures for link exchanges (``rsa-pss-sha512``), requests and responses.

Covered: ``@method``, ``@target-uri``, ``content-digest`` (RFC 9530, sha-512) and ``content-type``
(responses: ``@status`` and the request's method and target URI with ``;req``). Parameters:
``created``, ``nonce``, ``keyid`` (the SHA-256 fingerprint of the signer's public key),
``alg`` and ``tag="flowlink-sync"``. Verification says *why* a message is rejected, so operators
can act on it; replayed nonces are the caller's to check (they need the store).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import http_sf
import httpx
from cryptography.exceptions import InvalidSignature as InvalidRsaSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from http_message_signatures import (
    ContentDigest,
    HTTPMessageVerifier,
    HTTPSignatureComponentResolver,
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
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=64)  # rsa-pss-sha512
# The one form of Signature-Input and Signature this end writes (and every flowlink end
# wrote before it): read without a general Structured Fields parser, which costs more than
# the RSA operation. Anything else is read by the general parser and verifier.
_PLAIN_INPUT = re.compile(
    rf'{LABEL}=\((?P<components>"[a-z@-]+"(?:;req)?(?: "[a-z@-]+"(?:;req)?)*)\)'
    r'(?P<params>(?:;[a-z]+=(?:0|[1-9][0-9]{0,15}|"[\x21\x23-\x5b\x5d-\x7e]*"))+)'
)
_PLAIN_PARAM = re.compile(r';([a-z]+)=(?:([0-9]+)|"([^"]*)")')
_PLAIN_SIGNATURE = re.compile(rf"{LABEL}=:(?P<value>[A-Za-z0-9+/]+={{0,2}}):")
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


@functools.lru_cache(maxsize=4096)  # one URL per link
def _target_uri(url: str) -> str:
    """``@target-uri`` of a URL, normalized as RFC 9421 says (host in lower case...)."""
    resolver = HTTPSignatureComponentResolver(SignedRequest("POST", url, httpx.Headers()))
    return str(resolver.get_target_uri())


@functools.lru_cache(maxsize=4096)  # one entry per key this process signs with
def _key_id(key: rsa.RSAPrivateKey) -> str:
    return fingerprint(key)


def _content_digest(body: bytes) -> str:
    return "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"


def _base(values: list[tuple[str, str]], signature_params: str) -> bytes:
    """The signature base (RFC 9421 section 2.5) of these component values."""
    lines = [f"{name}: {value}" for name, value in values]
    lines.append(f'"@signature-params": {signature_params}')
    text = "\n".join(lines)
    if not text.isascii() or any(c in value for _, value in values for c in "\r\n"):
        raise SignatureRejected("malformed", "a covered value is not printable ASCII")
    return text.encode()


def _values(message: SignedRequest | SignedResponse) -> list[tuple[str, str]]:
    """The covered components of a link message and their values, in the signed order."""
    headers = message.headers
    for name in ("content-digest", "content-type"):
        if name not in headers:
            raise SignatureRejected("bad_signature", f"the covered field {name!r} is missing")
    fields = [
        ('"content-digest"', headers["content-digest"].strip()),
        ('"content-type"', headers["content-type"].strip()),
    ]
    if isinstance(message, SignedResponse):
        request = message.request
        return [
            ('"@status"', str(message.status_code)),
            ('"@method";req', request.method),
            ('"@target-uri";req', _target_uri(request.url)),
            *fields,
        ]
    return [('"@method"', message.method), ('"@target-uri"', _target_uri(message.url)), *fields]


def _sign(
    message: SignedRequest | SignedResponse,
    key: rsa.RSAPrivateKey,
    body: bytes,
    components: tuple[str, ...],
    created: datetime | None,
    nonce: str | None,
) -> None:
    """Add ``Content-Digest``, ``Signature-Input`` and ``Signature`` (one RSA signature)."""
    headers = message.headers
    headers["content-digest"] = _content_digest(body)
    moment = int((created or datetime.now(UTC)).timestamp())
    covered = " ".join(c if c.startswith('"') else f'"{c}"' for c in components)
    signature_params = (
        f'({covered});created={moment};keyid="{_key_id(key)}";alg="rsa-pss-sha512"'
        f';nonce="{nonce or secrets.token_urlsafe(16)}";tag="{TAG}"'
    )
    signature = key.sign(_base(_values(message), signature_params), _PSS, hashes.SHA512())
    headers["signature-input"] = f"{LABEL}={signature_params}"
    headers["signature"] = f"{LABEL}=:{base64.b64encode(signature).decode()}:"


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


@dataclass(frozen=True)
class _Input:
    """The one signature's covered components and parameters (from ``Signature-Input``).

    ``plain``: its member's text, when it has the plain form this end writes (see
    ``_PLAIN_INPUT``); its ``@signature-params`` line is then that text.
    """

    components: list[str]
    params: dict[str, Any]
    plain: str | None


def _signature_input(headers: httpx.Headers) -> _Input:
    """The covered components and parameters of the one signature, or SignatureRejected."""
    if "signature-input" not in headers or "signature" not in headers:
        raise SignatureRejected("unsigned", "no Signature and Signature-Input header fields")
    text = headers["signature-input"]
    plain = _PLAIN_INPUT.fullmatch(text)
    if plain is not None:
        names = [p[0] for p in _PLAIN_PARAM.findall(plain["params"])]
        if len(names) == len(set(names)):  # a repeated parameter: the general parser decides
            params: dict[str, Any] = {
                name: int(number) if number else string
                for name, number, string in _PLAIN_PARAM.findall(plain["params"])
            }
            components = [c.replace('"', "") for c in plain["components"].split(" ")]
            return _Input(components, params, text[len(LABEL) + 1 :])
    try:
        parsed: Any = http_sf.parse(text.encode(), tltype="dictionary")
    except Exception:
        raise SignatureRejected("malformed", "Signature-Input is not a valid dictionary") from None
    if LABEL not in parsed or len(parsed) != 1:
        raise SignatureRejected("malformed", f"expected exactly one signature labelled {LABEL!r}")
    inner, general = parsed[LABEL]
    if not isinstance(inner, list):
        raise SignatureRejected("malformed", "Signature-Input member is not an inner list")
    components = [str(name) + "".join(f";{k}" for k in item_params) for name, item_params in inner]
    return _Input(components, dict(general), None)


def _check(
    headers: httpx.Headers,
    body: bytes,
    keys: Mapping[str, rsa.RSAPublicKey],
    expected: tuple[str, ...],
) -> _Input:
    found = _signature_input(headers)
    components, params = found.components, found.params
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
    if not hmac.compare_digest(headers.get("content-digest", ""), _content_digest(body)):
        raise SignatureRejected("digest_mismatch", "Content-Digest does not match the body")
    return found


def verify_request(
    keys: Mapping[str, rsa.RSAPublicKey],
    method: str,
    url: str,
    headers: httpx.Headers,
    body: bytes,
) -> Verified:
    """Verify a signed request against the remote's public keys (by fingerprint)."""
    found = _check(headers, body, keys, REQUEST_COMPONENTS)
    _verify(SignedRequest(method, url, headers), keys, body, found, REQUEST_COMPONENTS)
    params = found.params
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
    found = _check(headers, body, keys, RESPONSE_COMPONENTS)
    request = SignedRequest(request_method, request_url, httpx.Headers())
    message = SignedResponse(status_code, headers, request)
    _verify(message, keys, body, found, RESPONSE_COMPONENTS)
    params = found.params
    return Verified(
        params["keyid"], datetime.fromtimestamp(params["created"], UTC), params["nonce"]
    )


def _verify(
    message: SignedRequest | SignedResponse,
    keys: Mapping[str, rsa.RSAPublicKey],
    body: bytes,
    found: _Input,
    expected: tuple[str, ...],
) -> None:
    """Check the RSA signature (``_check`` has checked everything else)."""
    signature = _PLAIN_SIGNATURE.fullmatch(message.headers["signature"])
    in_order = found.components == [c.replace('"', "") for c in expected]
    if found.plain is not None and signature is not None and in_order:
        key = keys[found.params["keyid"]]
        try:
            base = _base(_values(message), found.plain)
            key.verify(base64.b64decode(signature["value"]), base, _PSS, hashes.SHA512())
        except (InvalidRsaSignature, ValueError):
            raise SignatureRejected("bad_signature", "the signature does not verify") from None
        return
    verifier = _Verifier(signature_algorithm=algorithms.RSA_PSS_SHA512, key_resolver=_Keys(keys))
    try:
        verifier.verify(message, max_age=MAX_AGE, expect_label=LABEL, expect_tag=TAG, body=body)
    except InvalidSignature as exc:
        raise SignatureRejected("bad_signature", f"the signature does not verify ({exc})") from None
