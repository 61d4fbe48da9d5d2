"""Authorization: the single place that decides whether a principal may act on a workspace.

Every API route, ``flow_api`` call and event filter asks :func:`authorize` (or :func:`allows`).
Roles are sets of rules ``(action, subject, conditions)``: the built-in workspace roles are
fixed below, custom roles come from ``workspace.yml`` (stored in ``Workspace.spec["roles"]``).
A rule allows; anything no rule allows is denied. ``manage`` on a subject implies every
action on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from flowlink.access.service import Principal
from flowlink.errors import Forbidden, NotFound
from flowlink.store.models import Workspace
from flowlink.workspaces.spec import ACTIONS, BUILTIN_ROLES, CONDITION_KEYS, SUBJECTS

__all__ = [
    "ACTIONS",
    "BUILTIN_ROLES",
    "SUBJECTS",
    "AccessDenied",
    "Denial",
    "Rule",
    "WorkspaceHidden",
    "allows",
    "authorize",
    "authorize_admin",
    "can_grant",
    "denial_of",
    "deny",
    "event_reader",
    "role_exists",
    "role_rules",
    "visible",
]

# Only organization admins create, change or delete sync configs (docs/linking.md).
ADMIN_ONLY = frozenset(
    (action, "sync_configs") for action in ("create", "update", "delete", "manage")
)


@dataclass(frozen=True)
class Rule:
    """One allow rule: ``action`` on ``subject`` when every condition glob matches."""

    action: str
    subject: str
    conditions: tuple[tuple[str, str], ...] = ()

    def matches(self, action: str, subject: str, attributes: Mapping[str, Any] | None) -> bool:
        """Whether this rule allows the request (unknown attributes: conditions assumed met)."""
        if self.subject != subject or self.action not in (action, "manage"):
            return False
        if attributes is None or not self.conditions:
            return True
        for key, pattern in self.conditions:
            value = attributes.get(key)
            if value is None and key == "name":
                value = _primary(subject, attributes)
            if value is None or not fnmatchcase(str(value), pattern):
                return False
        return True


def _primary(subject: str, attributes: Mapping[str, Any]) -> Any:
    keys = CONDITION_KEYS.get(subject, ())
    return attributes.get(keys[0]) if keys else None


def _grant(actions: tuple[str, ...], subjects: tuple[str, ...]) -> tuple[Rule, ...]:
    return tuple(Rule(a, s) for s in subjects for a in actions)


_READ = _grant(("read",), SUBJECTS)
_OWN_TOKENS = _grant(("create", "delete"), ("tokens",))
_VIEWER = _READ + _OWN_TOKENS
_OPERATOR = _VIEWER + _grant(("execute",), ("executions", "automations"))
_EDITOR = (
    _OPERATOR
    + _grant(
        ("create", "update", "delete"),
        ("flows", "settings", "automations", "pages", "apps", "files"),
    )
    + _grant(("create",), ("events",))
)
_OWNER = _grant(("manage",), SUBJECTS)
# End users who may see the workspace's pages and nothing else.
_VISITOR = _grant(("read",), ("pages",))

BUILTIN_RULES: dict[str, tuple[Rule, ...]] = {
    "owner": _OWNER,
    "editor": _EDITOR,
    "operator": _OPERATOR,
    "viewer": _VIEWER,
    "visitor": _VISITOR,
}
_NO_RULES: tuple[Rule, ...] = ()
_custom_cache: dict[tuple[str, int, str], tuple[Rule, ...]] = {}


@dataclass(frozen=True)
class Denial:
    """A refused request as recorded in an ``access.denied`` event (no secrets)."""

    workspace_id: str | None
    workspace_slug: str | None
    action: str
    subject: str
    reason: str
    attributes: dict[str, Any]
    principal: dict[str, Any]  # ``Principal.describe()``
    execution_id: str | None = None  # the execution whose ``flow_api`` call was refused


class AccessDenied(Forbidden):
    """403: the caller may see the workspace but not do this; ``denial`` is what gets recorded."""

    def __init__(self, message: str, *, denial: Denial) -> None:
        super().__init__(message, details={"action": denial.action, "subject": denial.subject})
        self.denial = denial


class WorkspaceHidden(NotFound):
    """404: the caller may not know that this workspace exists."""

    def __init__(self, workspace: Workspace, denial: Denial) -> None:
        super().__init__(
            f"workspace {workspace.slug!r} not found", details={"workspace": workspace.slug}
        )
        self.denial = denial


def denial_of(error: BaseException) -> Denial | None:
    """The denial an error of :func:`authorize` carries (to record it), or None."""
    return error.denial if isinstance(error, AccessDenied | WorkspaceHidden) else None


def role_rules(workspace: Workspace, role: str) -> tuple[Rule, ...]:
    """The rules of a built-in role or of a custom role of ``workspace`` (none if unknown)."""
    builtin = BUILTIN_RULES.get(role)
    if builtin is not None:
        return builtin
    key = (workspace.id, workspace.version, role)
    cached = _custom_cache.get(key)
    if cached is None:
        declared = (workspace.spec or {}).get("roles", {}).get(role)
        cached = tuple(
            Rule(
                r["action"],
                r["subject"],
                tuple(sorted((r.get("conditions") or {}).items())),
            )
            for r in declared or ()
        )
        if len(_custom_cache) > 4096:
            _custom_cache.clear()
        _custom_cache[key] = cached
    return cached if cached else _NO_RULES


def role_exists(workspace: Workspace, role: str) -> bool:
    """Whether ``role`` is a built-in role or declared in the workspace's ``roles:``."""
    return role in BUILTIN_RULES or role in (workspace.spec or {}).get("roles", {})


def is_org_admin(principal: Principal) -> bool:
    """An organization admin acting with full rights (not through a workspace-scoped token)."""
    return principal.is_admin and principal.workspace_id is None and not principal.disabled


def _roles_in(principal: Principal, workspace: Workspace) -> list[str] | None:
    """Every role that must allow an action in ``workspace``; None if it is not visible."""
    if principal.disabled:
        return None
    if principal.workspace_id is not None and principal.workspace_id != workspace.id:
        return None
    roles: list[str] = []
    if principal.role is not None:
        roles.append(principal.role)
    if principal.user_id is not None and not principal.is_admin:
        membership = principal.memberships.get(workspace.id)
        if membership is None:
            return None
        roles.append(membership)
    if not roles:
        # An admin's token scoped to a workspace without a role acts as the admin there.
        return [] if principal.is_admin else None
    return roles


def visible(principal: Principal, workspace: Workspace) -> bool:
    """Whether the principal may know the workspace exists."""
    return is_org_admin(principal) or _roles_in(principal, workspace) is not None


def allows(
    principal: Principal,
    action: str,
    subject: str,
    workspace: Workspace | None,
    attributes: Mapping[str, Any] | None = None,
) -> bool:
    """Whether the principal may do ``action`` on ``subject`` (no error, nothing recorded)."""
    if action not in ACTIONS or subject not in SUBJECTS:
        raise ValueError(f"unknown permission {action} {subject}")
    if is_org_admin(principal):
        return True
    if workspace is None or (action, subject) in ADMIN_ONLY:
        return False
    roles = _roles_in(principal, workspace)
    if roles is None:
        return False
    for role in dict.fromkeys(roles) if len(roles) > 1 else roles:
        if not any(
            rule.matches(action, subject, attributes) for rule in role_rules(workspace, role)
        ):
            return False
    return True


def _denial(
    principal: Principal,
    action: str,
    subject: str,
    workspace: Workspace | None,
    reason: str,
    attributes: Mapping[str, Any] | None,
) -> Denial:
    return Denial(
        workspace_id=workspace.id if workspace else None,
        workspace_slug=workspace.slug if workspace else None,
        action=action,
        subject=subject,
        reason=reason,
        attributes=dict(attributes or {}),
        principal=principal.describe(),
    )


def authorize(
    principal: Principal,
    action: str,
    subject: str,
    workspace: Workspace | None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Raise unless ``principal`` may do ``action`` on ``subject`` in ``workspace``.

    ``attributes`` describe the resource (``{"flow": "reports-daily"}``) for rule conditions;
    without them, a conditional rule counts as a possible allow and the caller must check
    (or filter) each concrete resource again. A workspace the principal may not see raises
    :class:`WorkspaceHidden` (404); anything else not allowed raises :class:`AccessDenied` (403).
    """
    if allows(principal, action, subject, workspace, attributes):
        return
    if workspace is None:
        reason = f"{action} {subject} requires the organization admin"
        raise AccessDenied(
            reason, denial=_denial(principal, action, subject, None, reason, attributes)
        )
    if not visible(principal, workspace):
        reason = "the workspace is not visible to this caller"
        raise WorkspaceHidden(
            workspace, _denial(principal, action, subject, workspace, reason, attributes)
        )
    if (action, subject) in ADMIN_ONLY:
        reason = f"only the organization admin may {action} {subject}"
    else:
        roles = _roles_in(principal, workspace) or []
        denying = [
            r
            for r in dict.fromkeys(roles)
            if not any(
                rule.matches(action, subject, attributes) for rule in role_rules(workspace, r)
            )
        ]
        described = " and ".join(repr(r) for r in denying) or "none"
        target = "".join(f" {k}={v!r}" for k, v in sorted((attributes or {}).items()))
        reason = f"role {described} may not {action} {subject}{target} in {workspace.slug!r}"
    raise AccessDenied(
        reason, denial=_denial(principal, action, subject, workspace, reason, attributes)
    )


def deny(
    principal: Principal, action: str, subject: str, workspace: Workspace | None, reason: str
) -> AccessDenied:
    """A 403 for a decision made with more context than a rule (e.g. granting a higher role)."""
    return AccessDenied(reason, denial=_denial(principal, action, subject, workspace, reason, None))


def authorize_admin(principal: Principal, what: str) -> None:
    """Raise 403 unless the principal is an organization admin (users, new workspaces...)."""
    if not is_org_admin(principal):
        reason = f"only the organization admin may {what}"
        raise AccessDenied(
            reason, denial=_denial(principal, "manage", "workspace", None, reason, None)
        )


def _covers(holder: tuple[Rule, ...], wanted: tuple[Rule, ...]) -> bool:
    """Whether every rule in ``wanted`` is allowed by some rule in ``holder``."""
    for rule in wanted:
        if (rule.action, rule.subject) in ADMIN_ONLY:
            continue  # never effective for a workspace role
        wanted_conditions = dict(rule.conditions)
        ok = False
        for have in holder:
            if have.subject != rule.subject or have.action not in (rule.action, "manage"):
                continue
            if all(
                key in wanted_conditions
                and (
                    pattern == wanted_conditions[key]
                    or fnmatchcase(wanted_conditions[key], pattern)
                )
                for key, pattern in have.conditions
            ):
                ok = True
                break
        if not ok:
            return False
    return True


def can_grant(principal: Principal, workspace: Workspace, role: str) -> bool:
    """Whether the principal holds at least the rights of ``role`` in ``workspace``."""
    if is_org_admin(principal):
        return True
    roles = _roles_in(principal, workspace)
    if roles is None:
        return False
    if not roles:
        return True
    wanted = role_rules(workspace, role)
    return all(_covers(role_rules(workspace, have), wanted) for have in roles)


def event_reader(principal: Principal, workspace: Workspace) -> Callable[[str], bool]:
    """A filter for event search and the live stream: may the principal read events of a type?

    Call after ``authorize(principal, "read", "events", workspace)``; for roles without
    conditions on events it answers True without evaluating rules per event.
    """
    if allows(principal, "read", "events", workspace, {"type": "\x00"}):
        return _always
    return lambda event_type: allows(principal, "read", "events", workspace, {"type": event_type})


def _always(_event_type: str) -> bool:
    return True
