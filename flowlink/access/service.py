"""Who is calling: users, API tokens, and the one place that authenticates a request."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.errors import Conflict, Invalid, Unauthorized
from flowlink.store.models import ApiToken, User, utcnow

TOKEN_PREFIX = "fl_"
_hasher = PasswordHasher()


@dataclass(frozen=True)
class Principal:
    """The identity a request or an execution acts as."""

    user_id: str | None
    username: str
    is_admin: bool
    workspace_id: str | None = None
    role: str | None = None
    token_id: str | None = None


def hash_token(token: str) -> str:
    """The stored form of an API token (SHA-256; tokens are long random strings)."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """A slow, salted hash of a password (argon2id)."""
    return _hasher.hash(password)


def create_user(
    session: Session, username: str, password: str | None, *, is_admin: bool = False
) -> User:
    """Create a user of the organization."""
    if not username or len(username) > 128 or not username.isprintable():
        raise Invalid("username must be 1-128 printable characters", details={"field": "username"})
    if session.scalar(select(User.id).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists", details={"field": "username"})
    user = User(
        username=username,
        password_hash=hash_password(password) if password else None,
        is_admin=is_admin,
    )
    session.add(user)
    session.flush()
    return user


def create_token(
    session: Session,
    user: User,
    name: str,
    *,
    workspace_id: str | None = None,
    role: str | None = None,
    expires_at: datetime | None = None,
) -> tuple[str, ApiToken]:
    """Create an API token; the secret is returned once and only its hash is stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        name=name,
        token_hash=hash_token(secret),
        workspace_id=workspace_id,
        role=role,
        expires_at=expires_at,
    )
    session.add(token)
    session.flush()
    return secret, token


def authenticate_token(session: Session, secret: str) -> Principal:
    """The principal behind a bearer token; Unauthorized for an unknown, revoked or expired one."""
    row = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_hash == hash_token(secret))
    ).first()
    if row is None:
        raise Unauthorized("invalid API token")
    token, user = row
    if token.revoked_at is not None:
        raise Unauthorized("this API token was revoked")
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise Unauthorized("this API token has expired")
    if user.disabled:
        raise Unauthorized("this user is disabled")
    return Principal(
        user_id=user.id,
        username=user.username,
        is_admin=user.is_admin,
        workspace_id=token.workspace_id,
        role=token.role,
        token_id=token.id,
    )


@dataclass(frozen=True)
class AdminCredentials:
    """The organization admin's login, shown once by ``flowlink init``."""

    user: str
    password: str
    token: str


def init_admin(session: Session, username: str = "admin") -> AdminCredentials:
    """Create the organization admin with a random password and an API token."""
    if session.scalar(select(User.id).where(User.is_admin.is_(True))):
        raise Conflict("the organization admin already exists")
    password = secrets.token_urlsafe(12)
    user = create_user(session, username, password, is_admin=True)
    token, _ = create_token(session, user, "initial admin token")
    return AdminCredentials(user=username, password=password, token=token)


def admin_exists(session: Session) -> bool:
    """Whether ``flowlink init`` has run on this store."""
    return session.scalar(select(User.id).where(User.is_admin.is_(True))) is not None
