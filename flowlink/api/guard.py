"""The request body guard: size limits enforced while reading, and JSON that is fit to store.

An ASGI middleware in front of every route. It counts the bytes of the body as they arrive
(a ``Content-Length`` over the limit is refused before anything is read, and a chunked body
without one is refused as soon as it passes the limit), so a large body never reaches
memory. Routes that need no login (``/auth/login``, webhooks, a ``/sync`` request without a
signature) and requests without credentials get the tighter public limit; a request with
credentials may go past it only once its token or session cookie has been checked (401
otherwise), so a made-up ``Authorization`` header buys no room.

A JSON body is then checked once, before any route sees it: invalid UTF-8, a lone
surrogate (``"\\ud800"``), a NUL character, ``NaN``/``Infinity`` or nesting too deep for the
parser are refused with 422 naming the field, so nothing of the kind is ever stored. A NUL
in the path or a query parameter (which PostgreSQL cannot compare) is refused the same way.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flowlink.access.service import authenticate_session, authenticate_token
from flowlink.api.errors import error_response, is_sync_path, is_webhook_path
from flowlink.errors import Unauthorized
from flowlink.jsonsafe import find_problem
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store

LOGIN_PATH = "/api/v1/auth/login"
SESSION_COOKIE = "flowlink_session"
SESSION_COOKIE_PREFIX = SESSION_COOKIE + "="


class BodyGuard:
    """Refuse request bodies over their limit (413) and JSON unfit to store (422)."""

    def __init__(self, app: ASGIApp, settings: ServerSettings, store: Store) -> None:
        self.app = app
        self.settings = settings
        self.store = store

    def credentials_problem(self, headers: Headers) -> Unauthorized | None:
        """Why the request's token or session cookie does not hold, or None if it does."""
        header = headers.get("authorization", "")
        try:
            with self.store.read() as session:
                if header:
                    scheme, _, secret = header.partition(" ")
                    if scheme.lower() != "bearer" or not secret.strip():
                        raise Unauthorized("malformed credentials")
                    authenticate_token(session, secret.strip())
                else:
                    cookie = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE, "")
                    authenticate_session(session, cookie)
        except Unauthorized as error:
            return error
        return None

    def limit_for(self, path: str, headers: Headers) -> tuple[int, str]:
        """The byte limit of a request and the setting that sets it."""
        public = (self.settings.max_public_body_bytes, "FLOWLINK_MAX_PUBLIC_BODY_BYTES")
        full = (self.settings.max_body_bytes, "FLOWLINK_MAX_BODY_BYTES")
        if is_sync_path(path):
            # The signature is checked once the body is read; an unsigned request is refused
            # anyway, so it gets no more room than any other public request.
            return full if "signature-input" in headers else public
        if path == LOGIN_PATH or is_webhook_path(path):
            return public
        if "authorization" in headers or SESSION_COOKIE_PREFIX in headers.get("cookie", ""):
            return full
        return public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        unfit = nul_in_request(scope)
        if unfit is not None:
            await _invalid(
                scope, receive, send, unfit, "the NUL character (\\u0000) is not allowed"
            )
            return
        limit, setting = self.limit_for(scope["path"], headers)
        public = self.settings.max_public_body_bytes
        # Past the public limit only with credentials that hold (a /sync signature is
        # checked by its route, once the body is read).
        checked = limit <= public or is_sync_path(scope["path"])
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, limit, setting)
            return
        if not checked and declared.isdigit() and int(declared) > public:
            if not await self._credentials_hold(scope, receive, send, headers):
                return
            checked = True
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large(scope, receive, send, limit, setting)
                return
            if not checked and size > public:
                if not await self._credentials_hold(scope, receive, send, headers):
                    return
                checked = True
            if chunk:
                chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        chunks.clear()
        if body:
            problem = json_problem(scope["path"], headers, body)
            if problem is not None:
                await _invalid(scope, receive, send, *problem)
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _credentials_hold(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers
    ) -> bool:
        problem = await run_in_threadpool(self.credentials_problem, headers)
        if problem is None:
            return True
        response = error_response(problem.status, problem.code, problem.message, problem.details)
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
        return False

    @staticmethod
    async def _too_large(
        scope: Scope, receive: Receive, send: Send, limit: int, setting: str
    ) -> None:
        response = error_response(
            413,
            "payload_too_large",
            f"the request body is larger than the limit of {limit} bytes (set by {setting})",
            {"limit": limit, "setting": setting},
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)


async def _invalid(scope: Scope, receive: Receive, send: Send, field: str, reason: str) -> None:
    response = error_response(
        422,
        "invalid",
        f"{field}: {reason}",
        {"field": field, "errors": [{"field": field, "message": reason}]},
    )
    await response(scope, receive, send)


def nul_in_request(scope: Scope) -> str | None:
    """The query parameter (or ``path``) that holds a NUL character, if any."""
    if "\x00" in scope["path"]:
        return "path"
    query = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or "\x00" in value:
                return name.replace("\x00", "\ufffd")
    return None


def json_problem(path: str, headers: Headers, body: bytes) -> tuple[str, str] | None:
    """``(field, reason)`` if a body that will be read as JSON is unfit to store, else None.

    A body is read as JSON when its content type says so, when it has none (FastAPI parses
    it as JSON then), and on a webhook when it starts like a JSON document. Bodies that are
    not JSON at all are left to the route, which answers them as it always did.
    """
    content_type = headers.get("content-type", "").lower()
    declared = "json" in content_type
    webhook = is_webhook_path(path)
    if not declared:
        if webhook:
            if body.lstrip()[:1] not in (b"{", b"["):
                return None
        elif content_type:
            return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        if webhook and not declared:
            return None  # read as text, invalid bytes replaced by U+FFFD
        return "body", f"not valid UTF-8 (byte {exc.start})"
    try:
        value: Any = json.loads(text)
    except RecursionError:
        return "body", "nested too deeply"
    except ValueError:
        return None
    return find_problem(value)
