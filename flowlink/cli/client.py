"""The CLI's HTTP client: server URL and token resolution, and readable API errors."""

from __future__ import annotations

import os
from typing import Any

import httpx

from flowlink.server import load_credentials

DEFAULT_SERVER = "http://127.0.0.1:8080"


class ApiError(Exception):
    """An error answer from the server, or no answer at all."""

    def __init__(self, message: str, status: int | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.details = details


class Client:
    """A small typed wrapper over the REST API."""

    def __init__(self, server: str | None = None, token: str | None = None, timeout: float = 60):
        saved = load_credentials()
        self.server = (
            server or os.environ.get("FLOWLINK_SERVER") or saved.get("server") or DEFAULT_SERVER
        ).rstrip("/")
        self.token = token or os.environ.get("FLOWLINK_TOKEN") or saved.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request; return the decoded JSON body or raise ApiError."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(f"cannot reach the flowlink server at {self.server}: {exc}") from exc
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
