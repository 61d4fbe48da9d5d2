"""Shared FastAPI dependencies: the server context and the authenticated principal."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from flowlink.access.service import Principal, authenticate_token
from flowlink.errors import Unauthorized
from flowlink.settings import ServerSettings
from flowlink.store.engine import Store


@dataclass
class ServerContext:
    """What every request handler may use: the store and the settings."""

    store: Store
    settings: ServerSettings


def get_context(request: Request) -> ServerContext:
    """The server context of the running app."""
    context: ServerContext = request.app.state.context
    return context


def authenticated(
    request: Request, context: Annotated[ServerContext, Depends(get_context)]
) -> Principal:
    """Authenticate the request (``Authorization: Bearer <token>``); the one place that does."""
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing credentials: send 'Authorization: Bearer <API token>'")
    with context.store.read() as session:
        return authenticate_token(session, secret.strip())


Context = Annotated[ServerContext, Depends(get_context)]
Caller = Annotated[Principal, Depends(authenticated)]
