"""Who is calling: users, memberships, login sessions, API tokens and identities.

Authentication (turning a bearer token or a session cookie into a :class:`Principal`) happens
here; deciding what a principal may do is :mod:`flowlink.access.policy`.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from flowlink.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from flowlink.events.service import record
from flowlink.store.models import ApiToken, Membership, User, UserSession, Workspace, utcnow
from flowlink.timestamps import format_optional, format_timestamp

TOKEN_PREFIX = "fl_"
SESSION_HOURS = 12
MIN_PASSWORD_LENGTH = 8
IDENTITY_KINDS = ("user", "webhook", "schedule", "sync_config", "automation", "system", "page")
DEFAULT_IDENTITY_ROLE = "editor"
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("flowlink-no-such-user")
LOGIN_FAILED = "wrong username or password"


@dataclass(frozen=True)
class Principal:
    """The identity a request or an execution acts as.

    ``kind`` is ``user`` for people and their tokens, or the kind of a non-human identity
    (``webhook``, ``schedule``, ``sync_config``, ``automation``, ``system``) named ``username``.
    ``workspace_id``/``role`` restrict it to one workspace and role (a scoped token or an
    identity); ``memberships`` (workspace id -> role) are the user's own roles.
    """

    user_id: str | None
    username: str
    is_admin: bool
    workspace_id: str | None = None
    role: str | None = None
    token_id: str | None = None
    kind: str = "user"
    session_id: str | None = None
    disabled: bool = False
    memberships: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def describe(self) -> dict[str, Any]:
        """A JSON descriptor (no secrets) stored on executions and in ``access.denied`` events."""
        data: dict[str, Any] = {
            "kind": self.kind,
            "name": self.username,
            "userId": self.user_id,
            "isAdmin": self.is_admin,
            "workspaceId": self.workspace_id,
            "role": self.role,
            "tokenId": self.token_id,
        }
        return {k: v for k, v in data.items() if v not in (None, False)}


def hash_token(token: str) -> str:
    """The stored form of an API token (SHA-256; tokens are long random strings)."""
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    """A slow, salted hash of a password (argon2id)."""
    return _hasher.hash(password)


def check_password_strength(password: str) -> None:
    """Reject passwords that are too short."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise Invalid(
            f"password must have at least {MIN_PASSWORD_LENGTH} characters",
            details={"field": "password"},
        )


# --- users ------------------------------------------------------------------------------------


def create_user(
    session: Session, username: str, password: str | None, *, is_admin: bool = False
) -> User:
    """Create a user of the organization."""
    if (
        not username
        or len(username) > 128
        or not username.isprintable()
        or username != username.strip()
    ):
        raise Invalid("username must be 1-128 printable characters", details={"field": "username"})
    if session.scalar(select(User.id).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists", details={"field": "username"})
    if password is not None:
        check_password_strength(password)
    user = User(
        username=username,
        password_hash=hash_password(password) if password else None,
        is_admin=is_admin,
    )
    session.add(user)
    session.flush()
    record(session, None, "users.created", {"id": user.id, "user": username, "admin": is_admin})
    return user


def get_user(session: Session, username: str) -> User:
    """A user by login name (NotFound otherwise)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise NotFound(f"user {username!r} not found", details={"user": username})
    return user


def list_users(session: Session) -> list[User]:
    """All users, by name."""
    return list(session.scalars(select(User).order_by(User.username)))


def set_disabled(session: Session, user: User, disabled: bool) -> User:
    """Disable (ending every session) or enable a user; a disabled user's tokens stop working.

    Records ``users.disabled`` or ``users.enabled`` when the state changes.
    """
    if user.disabled == disabled:
        return user
    if disabled and user.is_admin:
        admins = session.scalars(
            select(User.id).where(User.is_admin.is_(True), User.disabled.is_(False))
        ).all()
        if len(admins) <= 1:
            raise Conflict("cannot disable the last organization admin")
    user.disabled = disabled
    user.updated_at = utcnow()
    if disabled:
        end_user_sessions(session, user.id)
    kind = "users.disabled" if disabled else "users.enabled"
    record(session, None, kind, {"id": user.id, "user": user.username})
    session.flush()
    return user


def set_password(session: Session, user: User, password: str | None = None) -> str:
    """Set (or, without ``password``, generate) a user's password; ends their sessions.

    Records ``users.password_changed`` (never with the password or its hash).
    """
    generated = password is None
    if password is None:
        password = secrets.token_urlsafe(12)
    check_password_strength(password)
    user.password_hash = hash_password(password)
    user.updated_at = utcnow()
    end_user_sessions(session, user.id)
    record(
        session,
        None,
        "users.password_changed",
        {"id": user.id, "user": user.username, "generated": generated},
    )
    session.flush()
    return password


def verify_password(user: User | None, password: str) -> bool:
    """Check a password in constant-ish time (a missing user still costs one hash)."""
    stored = user.password_hash if user is not None and user.password_hash else _DUMMY_HASH
    try:
        ok = _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False
    return ok and user is not None and bool(user.password_hash)


def user_view(user: User, memberships: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The API representation of a user (never the password hash)."""
    view: dict[str, Any] = {
        "id": user.id,
        "username": user.username,
        "is_admin": user.is_admin,
        "disabled": user.disabled,
        "created_at": format_timestamp(user.created_at),
    }
    if memberships is not None:
        view["memberships"] = [{"workspace": slug, "role": role} for slug, role in memberships]
    return view


def user_memberships(session: Session, user_id: str) -> list[tuple[str, str]]:
    """(workspace slug, role) of every membership of a user."""
    rows = session.execute(
        select(Workspace.slug, Membership.role)
        .join(Workspace, Workspace.id == Membership.workspace_id)
        .where(Membership.user_id == user_id)
        .order_by(Workspace.slug)
    ).all()
    return [(slug, role) for slug, role in rows]


# --- memberships ------------------------------------------------------------------------------


def set_membership(session: Session, user: User, workspace: Workspace, role: str) -> Membership:
    """Give a user a role in a workspace (replacing the one they had).

    Records ``memberships.updated`` in the workspace when the role changes.
    """
    membership = session.scalar(
        select(Membership).where(
            Membership.user_id == user.id, Membership.workspace_id == workspace.id
        )
    )
    previous = membership.role if membership is not None else None
    if membership is None:
        membership = Membership(user_id=user.id, workspace_id=workspace.id, role=role)
        session.add(membership)
    else:
        membership.role = role
    if previous != role:
        payload = {"user": user.username, "role": role, "previous": previous}
        record(session, workspace, "memberships.updated", payload)
    session.flush()
    return membership


def remove_membership(session: Session, user: User, workspace: Workspace) -> None:
    """Take a user's role in a workspace away (NotFound if they had none)."""
    membership = session.scalar(
        select(Membership).where(
            Membership.user_id == user.id, Membership.workspace_id == workspace.id
        )
    )
    if membership is None:
        raise NotFound(f"user {user.username!r} is not a member of {workspace.slug!r}")
    session.delete(membership)
    payload = {"user": user.username, "role": membership.role}
    record(session, workspace, "memberships.deleted", payload)
    session.flush()


def list_members(session: Session, workspace: Workspace) -> list[dict[str, Any]]:
    """The members of a workspace with their roles."""
    rows = session.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.workspace_id == workspace.id)
        .order_by(User.username)
    ).all()
    return [
        {"user": user.username, "user_id": user.id, "role": role, "disabled": user.disabled}
        for user, role in rows
    ]


def _memberships(session: Session, user_id: str) -> dict[str, str]:
    rows = session.execute(
        select(Membership.workspace_id, Membership.role).where(Membership.user_id == user_id)
    ).all()
    return {workspace_id: role for workspace_id, role in rows}


# --- API tokens -------------------------------------------------------------------------------


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
    if not name or len(name) > 128:
        raise Invalid("token name must be 1-128 characters", details={"field": "name"})
    if expires_at is not None and expires_at <= utcnow():
        raise Invalid("expires_at must be in the future", details={"field": "expires_at"})
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


def issue_token(
    session: Session,
    principal: Principal,
    name: str,
    workspace: Workspace | None,
    role: str | None,
    expires_at: datetime | None,
) -> tuple[str, ApiToken]:
    """Create a token for the calling user (the caller has been authorized) and record it."""
    if principal.user_id is None:
        raise Invalid("only users own API tokens")
    user = session.get(User, principal.user_id)
    if user is None:
        raise Unauthorized("this user no longer exists")
    secret, token = create_token(
        session,
        user,
        name,
        workspace_id=workspace.id if workspace else None,
        role=role,
        expires_at=expires_at,
    )
    record(
        session,
        workspace,
        "apikeys.created",
        {"id": token.id, "name": name, "role": role, "user": user.username},
        user_id=user.id,
    )
    return secret, token


def get_token(session: Session, token_id: str) -> ApiToken:
    """A token by id (NotFound otherwise)."""
    token = session.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"API token {token_id!r} not found", details={"token": token_id})
    return token


def list_tokens(session: Session, user_id: str | None) -> list[tuple[ApiToken, str | None, str]]:
    """Tokens (of one user, or all with ``user_id=None``) with workspace slug and owner name."""
    query = (
        select(ApiToken, Workspace.slug, User.username)
        .join(User, User.id == ApiToken.user_id)
        .outerjoin(Workspace, Workspace.id == ApiToken.workspace_id)
        .order_by(ApiToken.created_at)
    )
    if user_id is not None:
        query = query.where(ApiToken.user_id == user_id)
    return [(t, slug, owner) for t, slug, owner in session.execute(query).all()]


def revoke_token(session: Session, token: ApiToken, by: Principal) -> None:
    """Revoke a token (idempotent) and record ``apikeys.deleted``."""
    if token.revoked_at is not None:
        return
    token.revoked_at = utcnow()
    workspace = session.get(Workspace, token.workspace_id) if token.workspace_id else None
    record(
        session,
        workspace,
        "apikeys.deleted",
        {"id": token.id, "name": token.name, "by": by.username},
        user_id=by.user_id,
    )
    session.flush()


def token_view(token: ApiToken, workspace_slug: str | None, owner: str) -> dict[str, Any]:
    """A token without its secret."""
    now = utcnow()
    if token.revoked_at is not None:
        state = "revoked"
    elif token.expires_at is not None and token.expires_at <= now:
        state = "expired"
    else:
        state = "active"
    return {
        "id": token.id,
        "name": token.name,
        "user": owner,
        "workspace": workspace_slug,
        "role": token.role,
        "created_at": format_timestamp(token.created_at),
        "expires_at": format_optional(token.expires_at),
        "revoked_at": format_optional(token.revoked_at),
        "state": state,
    }


def authenticate_token(session: Session, secret: str) -> Principal:
    """The principal behind a bearer token; Unauthorized for an unknown, revoked or expired one."""
    row = session.execute(
        select(ApiToken, User, Membership.role)
        .join(User, User.id == ApiToken.user_id)
        .outerjoin(
            Membership,
            (Membership.user_id == ApiToken.user_id)
            & (Membership.workspace_id == ApiToken.workspace_id),
        )
        .where(ApiToken.token_hash == hash_token(secret))
    ).first()
    if row is None:
        raise Unauthorized("invalid API token")
    token, user, member_role = row
    if token.revoked_at is not None:
        raise Unauthorized("this API token was revoked")
    if token.expires_at is not None and token.expires_at <= utcnow():
        raise Unauthorized("this API token has expired")
    if user.disabled:
        raise Unauthorized("this user is disabled")
    if token.workspace_id is not None:
        memberships = {token.workspace_id: member_role} if member_role else {}
    else:
        memberships = {} if user.is_admin else _memberships(session, user.id)
    return Principal(
        user_id=user.id,
        username=user.username,
        is_admin=user.is_admin,
        workspace_id=token.workspace_id,
        role=token.role,
        token_id=token.id,
        memberships=memberships,
    )


# --- login sessions ---------------------------------------------------------------------------


@dataclass
class _Strikes:
    """Failed logins of one account or one address: how many, the last, the lock's end."""

    failures: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginThrottle:
    """Failed logins, counted per account (from any address) and per client address.

    An account is locked after ``account_failures`` failures, whatever addresses they came
    from; an address after ``address_failures`` failures, whatever accounts they tried. The
    first lock lasts ``base_delay`` seconds and each further failure doubles it, up to
    ``max_delay``; attempts while locked get 429 and count nothing. Counts are forgotten
    ``forget_after`` seconds after the last failure. A successful login clears its account's
    count but not its address's, so logging into one's own account between guesses at other
    accounts does not help. Kept in this process's memory.
    """

    MAX_KEYS = 100_000

    def __init__(
        self,
        account_failures: int = 5,
        address_failures: int = 20,
        base_delay: float = 15.0,
        max_delay: float = 900.0,
        forget_after: float = 3600.0,
    ) -> None:
        self.account_failures = account_failures
        self.address_failures = address_failures
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.forget_after = forget_after
        self._strikes: dict[tuple[str, str], _Strikes] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _keys(username: str, address: str) -> tuple[tuple[str, str], tuple[str, str]]:
        return ("account", username.lower()), ("address", address)

    def _current(self, key: tuple[str, str], now: float) -> _Strikes | None:
        strikes = self._strikes.get(key)
        if strikes is not None and now - strikes.last >= self.forget_after:
            del self._strikes[key]
            return None
        return strikes

    def check(self, username: str, address: str) -> None:
        """Raise TooManyRequests while this account or this address is locked."""
        now = time.monotonic()
        with self._lock:
            waits = [
                strikes.locked_until - now
                for key in self._keys(username, address)
                if (strikes := self._current(key, now)) is not None and strikes.locked_until > now
            ]
        if waits:
            retry = max(1, math.ceil(max(waits)))
            raise TooManyRequests("too many failed logins; try again later", retry_after=retry)

    def failed(self, username: str, address: str) -> None:
        """Count a failed login against the account and the address; lock them if due."""
        now = time.monotonic()
        account, client = self._keys(username, address)
        with self._lock:
            if len(self._strikes) >= self.MAX_KEYS:
                self._prune(now)
            for key, threshold in (
                (account, self.account_failures),
                (client, self.address_failures),
            ):
                strikes = self._current(key, now) or self._strikes.setdefault(key, _Strikes())
                strikes.failures += 1
                strikes.last = now
                over = strikes.failures - threshold
                if over >= 0:
                    delay = min(self.max_delay, self.base_delay * 2 ** min(over, 32))
                    strikes.locked_until = now + delay

    def succeeded(self, username: str, address: str) -> None:
        """Forget the failures of the account that just logged in."""
        with self._lock:
            self._strikes.pop(self._keys(username, address)[0], None)

    def _prune(self, now: float) -> None:
        """Drop forgotten counts; if that is not enough, the oldest unlocked half."""
        for key in [k for k, s in self._strikes.items() if now - s.last >= self.forget_after]:
            del self._strikes[key]
        if len(self._strikes) >= self.MAX_KEYS:
            unlocked = sorted(
                (s.last, k) for k, s in self._strikes.items() if s.locked_until <= now
            )
            for _, key in unlocked[: len(unlocked) // 2 or len(unlocked)]:
                del self._strikes[key]


def csrf_token_for(session_secret: str) -> str:
    """The CSRF token bound to a session (sent as a readable cookie and echoed in a header)."""
    return hmac.new(session_secret.encode(), b"flowlink-csrf", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class LoginResult:
    """A new session: the cookie secret, its CSRF token and the user."""

    secret: str
    csrf_token: str
    expires_at: datetime
    user: User


def login(
    session: Session, throttle: LoginThrottle, username: str, password: str, address: str
) -> LoginResult:
    """Check a password and open a session; one generic 401 for every kind of failure."""
    throttle.check(username, address)
    user = session.scalar(select(User).where(User.username == username))
    if not verify_password(user, password) or user is None or user.disabled:
        throttle.failed(username, address)
        raise Unauthorized(LOGIN_FAILED)
    throttle.succeeded(username, address)
    if user.password_hash and _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = hash_password(password)
    secret = secrets.token_urlsafe(32)
    expires_at = utcnow() + timedelta(hours=SESSION_HOURS)
    session.add(UserSession(user_id=user.id, token_hash=hash_token(secret), expires_at=expires_at))
    session.flush()
    return LoginResult(secret, csrf_token_for(secret), expires_at, user)


def logout(session: Session, secret: str) -> None:
    """End the session of this cookie secret (no error if it already ended)."""
    row = session.scalar(select(UserSession).where(UserSession.token_hash == hash_token(secret)))
    if row is not None and row.ended_at is None:
        row.ended_at = utcnow()


def end_user_sessions(session: Session, user_id: str) -> None:
    """End every open session of a user."""
    for row in session.scalars(
        select(UserSession).where(UserSession.user_id == user_id, UserSession.ended_at.is_(None))
    ):
        row.ended_at = utcnow()


def authenticate_session(session: Session, secret: str) -> Principal:
    """The principal behind a session cookie; Unauthorized for an unknown or ended session."""
    row = session.execute(
        select(UserSession, User)
        .join(User, User.id == UserSession.user_id)
        .where(UserSession.token_hash == hash_token(secret))
    ).first()
    if row is None:
        raise Unauthorized("invalid session; log in again")
    login_session, user = row
    if login_session.ended_at is not None or login_session.expires_at <= utcnow():
        raise Unauthorized("this session has ended; log in again")
    if user.disabled:
        raise Unauthorized("this user is disabled")
    return Principal(
        user_id=user.id,
        username=user.username,
        is_admin=user.is_admin,
        session_id=login_session.id,
        memberships={} if user.is_admin else _memberships(session, user.id),
    )


# --- identities of executions -----------------------------------------------------------------


def identity_principal(
    kind: str, name: str, workspace: Workspace, role: str = DEFAULT_IDENTITY_ROLE
) -> Principal:
    """A non-human identity (webhook, schedule, sync config...) with a role in one workspace."""
    if kind not in IDENTITY_KINDS or kind == "user":
        raise ValueError(f"unknown identity kind {kind!r}")
    return Principal(
        user_id=None,
        username=name,
        is_admin=False,
        workspace_id=workspace.id,
        role=role,
        kind=kind,
    )


def principal_from_descriptor(
    session: Session, descriptor: dict[str, Any] | None, user_id: str | None, workspace_id: str
) -> Principal:
    """The principal an execution acts as, from its stored descriptor (rights as of now).

    A user's rights are reloaded (a disabled user's executions may do nothing). Executions
    without a descriptor (created before access control) act as their user, or as the
    ``system`` identity with the default identity role.
    """
    descriptor = descriptor or {}
    kind = descriptor.get("kind") or ("user" if user_id else "system")
    if kind != "user":
        return Principal(
            user_id=None,
            username=str(descriptor.get("name") or kind),
            is_admin=False,
            workspace_id=descriptor.get("workspaceId") or workspace_id,
            role=descriptor.get("role") or DEFAULT_IDENTITY_ROLE,
            kind=kind,
        )
    uid = descriptor.get("userId") or user_id
    user = session.get(User, uid) if uid else None
    if user is None:
        return Principal(None, "unknown", False, workspace_id=workspace_id, disabled=True)
    return Principal(
        user_id=user.id,
        username=user.username,
        is_admin=user.is_admin,
        workspace_id=descriptor.get("workspaceId"),
        role=descriptor.get("role"),
        token_id=descriptor.get("tokenId"),
        disabled=user.disabled,
        memberships={} if user.is_admin else _memberships(session, user.id),
    )


# --- the organization admin -------------------------------------------------------------------


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


def check_login(session: Session, username: str, password: str) -> bool:
    """Whether this username and password would log in (used to verify saved demo logins)."""
    user = session.scalar(select(User).where(User.username == username))
    return user is not None and not user.disabled and verify_password(user, password)


def reset_admin_login(session: Session, username: str) -> AdminCredentials:
    """Give an admin a new password and token (``make run`` when the saved login is stale)."""
    user = get_user(session, username)
    password = set_password(session, user)
    token, _ = create_token(session, user, "demo admin token")
    return AdminCredentials(user=username, password=password, token=token)
