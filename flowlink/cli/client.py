"""The CLI's HTTP client: server URL and token resolution, and readable API errors.

httpx (and ssl) are imported when a client is made, not with this module: ``flowlink --help``
and the commands' option parsing then start without them (see docs/performance.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flowlink.credentials import load_credentials

if TYPE_CHECKING:
    import ssl

    import httpx

DEFAULT_SERVER = "http://127.0.0.1:8080"
CA_BUNDLE_ENV = "FLOWLINK_CA_BUNDLE"
# Set by ``flowlink --ca-certificate FILE`` for every client of this invocation.
extra_ca_files: list[str] = []


def tls_context(ca_files: list[str], server: str) -> ssl.SSLContext | bool:
    """Verification for the CLI's requests to ``server``: the system CAs plus ``ca_files`` (and
    ``FLOWLINK_CA_BUNDLE``), for servers whose certificate a private CA signed.

    The files are checked in any case, but a plain-HTTP server gets no TLS context at all:
    loading a CA bundle is a good part of a short command's start-up."""
    files = [*ca_files, *([os.environ[CA_BUNDLE_ENV]] if os.environ.get(CA_BUNDLE_ENV) else [])]
    for file in files:
        if not Path(file).is_file():
            raise ApiError(f"CA certificate file {file!r} does not exist")
    if not server.lower().startswith("https://"):
        return False
    if not files:
        return True
    import ssl

    context = ssl.create_default_context()
    for file in files:
        try:
            context.load_verify_locations(cafile=file)
        except ssl.SSLError as exc:
            raise ApiError(
                f"CA certificate file {file!r} is not a PEM certificate: {exc}"
            ) from None
    return context


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details


class Client:
    """A small typed wrapper over the REST API."""

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        timeout: float = 60,
        *,
        ca_files: list[str] | None = None,
    ):
        import httpx

        saved = load_credentials()
        self.server = (
            server or os.environ.get("FLOWLINK_SERVER") or saved.get("server") or DEFAULT_SERVER
        ).rstrip("/")
        self.token = token or os.environ.get("FLOWLINK_TOKEN") or saved.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        verify = tls_context([*extra_ca_files, *(ca_files or [])], self.server)
        self.http: httpx.Client = httpx.Client(
            base_url=self.server, headers=headers, timeout=timeout, verify=verify
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON body or raise ApiError."""
        import httpx

        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            hint = ""
            if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                hint = (
                    " (a server with a private CA: pass --ca-certificate FILE or set"
                    f" {CA_BUNDLE_ENV})"
                )
            raise ApiError(
                f"cannot reach the flowlink server at {self.server}: {exc}{hint}"
            ) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                message, details = error["message"], error.get("details")
            except (ValueError, KeyError, TypeError):
                message, details = response.text or response.reason_phrase, None
            if response.status_code == 401 and not self.token:
                message += " (set FLOWLINK_TOKEN or pass --token)"
            raise ApiError(message, response.status_code, details)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def get(self, path: str, **kwargs: Any) -> Any:
        """GET a path."""
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        """POST to a path."""
        return self.request("POST", path, **kwargs)

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()
