"""The connecting side of one exchange: sign, send, verify the signed answer, validate it."""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import rsa

from flowlink.errors import Invalid
from flowlink.linking import signing
from flowlink.linking.keys import fingerprint
from flowlink.linking.protocol import (
    FEATURES,
    FEATURES_HEADER,
    Envelope,
    features_of,
    parse_envelope,
)
from flowlink.observability.tracing import current_traceparent

log = logging.getLogger(__name__)
CONTENT_TYPE = "application/json"


class LinkUnavailable(Exception):
    """The other side could not be reached (network, TLS, timeout, 5xx): try again later."""


class LinkRefused(Exception):
    """The other side answered but refused the exchange (4xx), or its answer is not valid."""

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class TlsOptions:
    """How to check the remote's certificate."""

    ca_certificate: str | None = None
    verify_ssl: bool = True


def tls_verify(options: TlsOptions) -> ssl.SSLContext | bool:
    """The ``verify`` argument for httpx: a context trusting the CA, the default, or off."""
    if not options.verify_ssl:
        return False
    if options.ca_certificate:
        try:
            return ssl.create_default_context(cadata=options.ca_certificate)
        except (ssl.SSLError, ValueError) as exc:
            raise Invalid(
                f"ca_certificate: not a readable PEM certificate ({exc})",
                details={"field": "ca_certificate"},
            ) from None
    return True


@contextlib.contextmanager
def _unavailable() -> Iterator[None]:
    """Network, TLS and timeout errors of httpx as ``LinkUnavailable``."""
    try:
        yield
    except httpx.HTTPError as exc:
        raise LinkUnavailable(f"{type(exc).__name__}: {exc}") from exc


# How long an idle keep-alive connection to the other end is kept for the next exchange:
# less than the 5 s after which the other end's server (uvicorn, in every flowlink version)
# closes an idle connection. With a longer expiry, an exchange that reuses a connection just
# as the other end closes it fails with a read error and costs the link a back-off; a held
# poll's connection is busy, not idle, so it is reused as before.
KEEPALIVE_EXPIRY = 4.0


class AsyncClients:
    """The process's HTTP clients for links: one ``httpx.AsyncClient`` per TLS setting.

    Every connector of a process shares them (and their keep-alive connections), so a link
    costs a connection, not a client with its own TLS context and pool.
    """

    def __init__(self) -> None:
        self._clients: dict[TlsOptions, httpx.AsyncClient] = {}

    def get(self, tls: TlsOptions) -> httpx.AsyncClient:
        """The client for links with these TLS options (made on first use)."""
        client = self._clients.get(tls)
        if client is None:
            client = httpx.AsyncClient(
                verify=tls_verify(tls),
                limits=httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=None,
                    keepalive_expiry=KEEPALIVE_EXPIRY,
                ),
            )
            self._clients[tls] = client
        return client

    async def close(self) -> None:
        """Close every client and its connections."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


class Transport:
    """Sends exchanges to one remote sync endpoint.

    ``exchange_async`` sends on a shared ``httpx.AsyncClient`` (given as ``http``), as the
    connectors on the event loop do; ``exchange`` blocks, on a client of its own made on
    first use.
    """

    def __init__(
        self,
        remote_url: str,
        own_key: rsa.RSAPrivateKey,
        remote_keys: list[rsa.RSAPublicKey],
        tls: TlsOptions = TlsOptions(),
        *,
        timeout: float = 30.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.remote_url = remote_url
        self.own_key = own_key
        self.trusted = {fingerprint(key): key for key in remote_keys}
        if remote_url.startswith("https://") and not tls.verify_ssl:
            log.warning(
                "link to %s: TLS certificate verification is OFF (verify_ssl: false)", remote_url
            )
        self.tls = tls
        self.timeout = httpx.Timeout(timeout)
        self.async_http = http
        self._http: httpx.Client | None = None
        if http is None:
            self._http = httpx.Client(verify=tls_verify(tls), timeout=self.timeout)
        self.peer_features: frozenset[str] = frozenset()  # learned from the other end's answers

    def close(self) -> None:
        """Close the blocking client's connections (a shared async client is not ours)."""
        if self._http is not None:
            self._http.close()

    def exchange(self, body: dict[str, Any], *, read_timeout: float | None = None) -> Envelope:
        """Send our messages; return the other side's, verified and validated."""
        if self._http is None:
            self._http = httpx.Client(verify=tls_verify(self.tls), timeout=self.timeout)
        content, headers = self._request(body)
        with _unavailable():
            response = self._http.post(
                self.remote_url,
                content=content,
                headers=headers,
                timeout=self._timeout(read_timeout),
            )
        return self._answer(response)

    async def exchange_async(
        self, body: dict[str, Any], *, read_timeout: float | None = None
    ) -> Envelope:
        """``exchange`` on the event loop: waiting for the answer holds no thread."""
        assert self.async_http is not None, "made without an async client"
        content, headers = self._request(body)
        with _unavailable():
            response = await self.async_http.post(
                self.remote_url,
                content=content,
                headers=headers,
                timeout=self._timeout(read_timeout),
            )
        return self._answer(response)

    def _request(self, body: dict[str, Any]) -> tuple[bytes, httpx.Headers]:
        content = json.dumps(body, separators=(",", ":")).encode()
        headers = httpx.Headers({"content-type": CONTENT_TYPE})
        signing.sign_request(self.own_key, "POST", self.remote_url, headers, content)
        headers[FEATURES_HEADER] = ",".join(sorted(FEATURES))  # unsigned: only a hint
        traceparent = current_traceparent()
        if traceparent:
            headers["traceparent"] = traceparent
        return content, headers

    def _timeout(self, read_timeout: float | None) -> httpx.Timeout:
        # A long poll holds the answer back: allow for it on top of the usual timeout.
        timeout = self.timeout
        if read_timeout is None:
            return timeout
        return httpx.Timeout(
            timeout.connect, read=read_timeout, write=timeout.write, pool=timeout.pool
        )

    def _answer(self, response: httpx.Response) -> Envelope:
        """The other side's messages, once its status and signature hold."""
        if response.status_code >= 500:
            raise LinkUnavailable(f"the remote answered {response.status_code}")
        if response.status_code != 200:
            reason = None
            try:
                error = response.json()["error"]
                message, reason = error["message"], (error.get("details") or {}).get("reason")
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            raise LinkRefused(
                f"the remote refused the exchange ({response.status_code}): {message}",
                status=response.status_code,
                reason=reason,
            )
        try:
            signing.verify_response(
                self.trusted,
                response.status_code,
                response.headers,
                response.content,
                request_method="POST",
                request_url=self.remote_url,
            )
        except signing.SignatureRejected as exc:
            raise LinkRefused(
                f"the remote's answer is not signed by its configured key ({exc.message})",
                reason=exc.reason,
            ) from None
        self.peer_features = features_of(response.headers.get(FEATURES_HEADER))
        try:
            return parse_envelope(response.json())
        except ValueError as exc:
            raise LinkRefused(f"the remote's answer is not JSON: {exc}") from None
        except Invalid as exc:
            raise LinkRefused(f"the remote's answer is not valid: {exc.message}") from None
