"""Access services and the policy on the real store (SQLite and PostgreSQL)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from sqlalchemy import inspect

from flowlink import assembly
from flowlink.access import policy
from flowlink.access import service as access
from flowlink.errors import Conflict, Invalid, NotFound, TooManyRequests, Unauthorized
from flowlink.executions import service as executions
from flowlink.store.engine import Store
from flowlink.store.models import Execution, Workspace, utcnow
from flowlink.workspaces import service as workspaces

PASSWORD = "correct horse battery"
ROLES = """name: Policy
slug: pol
roles:
  reports:
    - action: read
      subject: flows
      conditions:
        flow: reports-*
    - action: execute
      subject: executions
      conditions:
        flow: reports-*
  billing-reader:
    - action: read
      subject: events
      conditions:
        type: billing.*
  janitor:
    - action: manage
      subject: settings
  syncer:
    - action: create
      subject: sync_configs
"""


@pytest.fixture
def ws(store: Store) -> Workspace:
    bundle = workspaces.parse_files(
        {"workspace.yml": ROLES, "flows/reports-daily.py": "def handler(s, t):\n    pass\n"}
    )
    with store.write() as session:
        return assembly.apply_bundle(session, bundle, {}).workspace


def user_principal(
    store: Store, name: str, roles: dict[str, str], **kw: object
) -> access.Principal:
    with store.write() as session:
        user = access.create_user(session, name, PASSWORD)
        for ws_id, role in roles.items():
            workspace = session.get(Workspace, ws_id)
            assert workspace is not None
            access.set_membership(session, user, workspace, role)
        secret, _ = access.create_token(session, user, "t", **kw)  # type: ignore[arg-type]
    with store.read() as session:
        return access.authenticate_token(session, secret)


def test_migration_creates_the_access_tables(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"memberships", "user_sessions"} <= tables
    columns = {c["name"] for c in inspect(store.engine).get_columns("executions")}
    assert "principal" in columns


def test_builtin_roles_grant_what_docs_access_md_says(store: Store, ws: Workspace) -> None:
    def p(role: str) -> access.Principal:
        return access.Principal("u", "u", False, memberships={ws.id: role})

    assert policy.allows(p("viewer"), "read", "settings", ws)
    assert not policy.allows(p("viewer"), "execute", "executions", ws)
    assert policy.allows(p("operator"), "execute", "executions", ws)
    assert not policy.allows(p("operator"), "update", "flows", ws)
    assert policy.allows(p("editor"), "update", "flows", ws)
    assert policy.allows(p("editor"), "delete", "settings", ws)
    assert not policy.allows(p("editor"), "update", "workspace", ws)
    assert policy.allows(p("owner"), "manage", "workspace", ws)
    for role in ("owner", "editor", "operator", "viewer"):
        assert not policy.allows(p(role), "create", "sync_configs", ws)
        assert policy.allows(p(role), "read", "sync_configs", ws)
    admin = access.Principal("a", "a", True)
    assert policy.allows(admin, "create", "sync_configs", ws)


def test_editor_creating_a_sync_config_is_403(store: Store, ws: Workspace) -> None:
    editor = access.Principal("u", "ed", False, memberships={ws.id: "editor"})
    with pytest.raises(policy.AccessDenied) as caught:
        policy.authorize(editor, "create", "sync_configs", ws)
    assert caught.value.status == 403
    assert "only the organization admin" in caught.value.message
    # not even a custom role can grant it
    syncer = access.Principal("u", "sy", False, memberships={ws.id: "syncer"})
    assert not policy.allows(syncer, "create", "sync_configs", ws)


def test_custom_rules_conditions_and_deny_by_default(store: Store, ws: Workspace) -> None:
    reporter = access.Principal("u", "r", False, memberships={ws.id: "reports"})
    assert policy.allows(reporter, "read", "flows", ws, {"flow": "reports-daily"})
    assert not policy.allows(reporter, "read", "flows", ws, {"flow": "payroll"})
    assert policy.allows(reporter, "read", "flows", ws)  # coarse check: some flows
    assert not policy.allows(reporter, "read", "settings", ws)
    assert not policy.allows(reporter, "update", "flows", ws, {"flow": "reports-daily"})
    billing = access.Principal("u", "b", False, memberships={ws.id: "billing-reader"})
    assert policy.allows(billing, "read", "events", ws, {"type": "billing.paid"})
    assert not policy.allows(billing, "read", "events", ws, {"type": "executions.created"})
    janitor = access.Principal("u", "j", False, memberships={ws.id: "janitor"})
    assert all(policy.allows(janitor, a, "settings", ws) for a in policy.ACTIONS)
    gone = access.Principal("u", "g", False, memberships={ws.id: "deleted-role"})
    assert not policy.allows(gone, "read", "workspace", ws)


def test_can_grant_compares_rights(store: Store, ws: Workspace) -> None:
    def p(role: str) -> access.Principal:
        return access.Principal("u", "u", False, memberships={ws.id: role})

    assert policy.can_grant(p("owner"), ws, "editor")
    assert policy.can_grant(p("editor"), ws, "operator")
    assert policy.can_grant(p("editor"), ws, "reports")
    assert policy.can_grant(p("janitor"), ws, "janitor")
    assert not policy.can_grant(p("viewer"), ws, "operator")
    assert not policy.can_grant(p("operator"), ws, "editor")
    assert not policy.can_grant(p("reports"), ws, "viewer")
    assert not policy.can_grant(p("editor"), ws, "owner")


def test_unknown_role_rule_is_rejected_naming_it(store: Store) -> None:
    for rule, name in (
        ("{action: fly, subject: flows}", "fly"),
        ("{action: read, subject: dragons}", "dragons"),
        ("{action: read, subject: events, conditions: {flow: x}}", "flow"),
    ):
        text = f"name: X\nslug: xx\nroles:\n  r:\n    - {rule}\n"
        with pytest.raises(Invalid) as caught:
            workspaces.parse_files({"workspace.yml": text})
        assert name in caught.value.message, caught.value.message
        assert caught.value.details.get("file") == "workspace.yml"


def test_scoped_token_is_limited_by_token_role_and_current_membership(
    store: Store, ws: Workspace
) -> None:
    with store.write() as session:
        user = access.create_user(session, "sam", PASSWORD)
        workspace = session.get(Workspace, ws.id)
        assert workspace is not None
        access.set_membership(session, user, workspace, "editor")
        secret, _ = access.create_token(session, user, "t", workspace_id=ws.id, role="viewer")
    with store.read() as session:
        principal = access.authenticate_token(session, secret)
    assert principal.memberships == {ws.id: "editor"}
    assert policy.allows(principal, "read", "flows", ws)
    assert not policy.allows(principal, "update", "flows", ws)  # the token says viewer
    with store.write() as session:
        workspace = session.get(Workspace, ws.id)
        assert workspace is not None
        access.remove_membership(session, access.get_user(session, "sam"), workspace)
        with pytest.raises(NotFound):
            access.remove_membership(session, access.get_user(session, "sam"), workspace)
    # rights as of now: the user left the workspace, so their token sees nothing there
    with store.read() as session:
        principal = access.authenticate_token(session, secret)
    with pytest.raises(policy.WorkspaceHidden):
        policy.authorize(principal, "read", "flows", ws)


def test_tokens_expire_revoke_and_users_disable(store: Store, ws: Workspace) -> None:
    with store.write() as session:
        user = access.create_user(session, "kim", PASSWORD)
        secret, token = access.create_token(
            session, user, "t", expires_at=utcnow() + timedelta(hours=1)
        )
        with pytest.raises(Invalid):
            access.create_token(session, user, "old", expires_at=utcnow() - timedelta(hours=1))
    with store.read() as session:
        assert access.authenticate_token(session, secret).username == "kim"
    admin = access.Principal(None, "root", True)
    with store.write() as session:
        access.revoke_token(session, access.get_token(session, token.id), admin)
    with store.read() as session, pytest.raises(Unauthorized, match="revoked"):
        access.authenticate_token(session, secret)
    with store.read() as session, pytest.raises(Unauthorized, match="invalid"):
        access.authenticate_token(session, "fl_unknown")


def test_login_sessions_and_password_changes(store: Store) -> None:
    throttle = access.LoginThrottle()
    with store.write() as session:
        access.create_user(session, "lea", PASSWORD)
        result = access.login(session, throttle, "lea", PASSWORD, "1.2.3.4")
    with store.read() as session:
        assert access.authenticate_session(session, result.secret).username == "lea"
    assert result.csrf_token == access.csrf_token_for(result.secret)
    with store.write() as session:
        access.set_password(session, access.get_user(session, "lea"), "another password")
    with store.read() as session, pytest.raises(Unauthorized):
        access.authenticate_session(session, result.secret)  # sessions end on reset
    with store.write() as session, pytest.raises(Unauthorized, match="wrong username or password"):
        access.login(session, throttle, "lea", PASSWORD, "1.2.3.4")
    with store.write() as session:
        with pytest.raises(Invalid):
            access.set_password(session, access.get_user(session, "lea"), "short")
        with pytest.raises(Conflict):
            access.create_user(session, "lea", PASSWORD)


def test_last_admin_cannot_be_disabled(store: Store) -> None:
    with store.write() as session:
        access.init_admin(session)
    with store.write() as session, pytest.raises(Conflict):
        access.set_disabled(session, access.get_user(session, "admin"), True)


def _retry_after(throttle: access.LoginThrottle, username: str, address: str) -> int | None:
    try:
        throttle.check(username, address)
    except TooManyRequests as error:
        assert error.status == 429
        return error.retry_after
    return None


def test_throttle_locks_the_account_from_any_address_with_growing_delays() -> None:
    throttle = access.LoginThrottle(account_failures=3, base_delay=10.0, max_delay=35.0)
    for n in range(3):
        assert _retry_after(throttle, "Ann", f"10.0.0.{n}") is None
        throttle.failed("Ann", f"10.0.0.{n}")
    # locked for every address, and only this account
    assert _retry_after(throttle, "ann", "10.9.9.9") == 10
    assert _retry_after(throttle, "bob", "10.0.0.1") is None
    throttle.failed("ann", "10.0.0.7")  # a failure counted after the lock doubles it
    assert _retry_after(throttle, "ann", "10.0.0.1") == 20
    throttle.failed("ann", "10.0.0.7")
    assert _retry_after(throttle, "ann", "10.0.0.1") == 35  # capped at max_delay
    throttle.succeeded("ann", "10.0.0.1")
    assert _retry_after(throttle, "ann", "10.0.0.1") is None


def test_throttle_locks_an_address_trying_many_accounts_and_forgets() -> None:
    throttle = access.LoginThrottle(
        account_failures=5, address_failures=4, base_delay=0.2, forget_after=0.5
    )
    for n in range(4):
        throttle.failed(f"user{n}", "10.0.0.1")
    assert _retry_after(throttle, "someone", "10.0.0.1") == 1
    assert _retry_after(throttle, "someone", "10.0.0.2") is None
    # logging into an account does not reset the address's count
    throttle.succeeded("someone", "10.0.0.1")
    assert _retry_after(throttle, "other", "10.0.0.1") == 1
    time.sleep(0.25)
    assert _retry_after(throttle, "other", "10.0.0.1") is None  # the lock ended
    throttle.failed("other", "10.0.0.1")
    assert _retry_after(throttle, "other", "10.0.0.1") == 1  # still counted: locked again
    time.sleep(0.55)
    throttle.failed("other", "10.0.0.1")  # forgotten: this is the first failure again
    assert _retry_after(throttle, "other", "10.0.0.1") is None


def test_identities_and_inherited_principal(store: Store, ws: Workspace) -> None:
    hook = access.identity_principal("webhook", "on-order", ws, role="operator")
    assert policy.allows(hook, "execute", "executions", ws)
    assert not policy.allows(hook, "update", "settings", ws)
    with store.write() as session:
        workspace = session.get(Workspace, ws.id)
        assert workspace is not None
        parent = executions.create_execution(
            session,
            workspace,
            flow_name="reports-daily",
            trigger={"type": "webhook"},
            principal=hook.describe(),
        )
        child = executions.create_execution(
            session, workspace, flow_name="reports-daily", parent=parent
        )
        child_id = child.id
    with store.read() as session:
        stored = session.get(Execution, child_id)
        assert stored is not None and stored.principal == hook.describe()
        restored = access.principal_from_descriptor(
            session, stored.principal, stored.user_id, ws.id
        )
    assert (restored.kind, restored.username, restored.role) == ("webhook", "on-order", "operator")
    with pytest.raises(ValueError):
        access.identity_principal("robot", "x", ws)


def test_execution_of_a_disabled_user_may_do_nothing(store: Store, ws: Workspace) -> None:
    with store.write() as session:
        user = access.create_user(session, "zed", PASSWORD)
        access.set_membership(session, user, session.get(Workspace, ws.id), "owner")  # type: ignore[arg-type]
        access.create_user(session, "other-admin", PASSWORD, is_admin=True)
        descriptor = access.Principal(user.id, "zed", False).describe()
        access.set_disabled(session, user, True)
    with store.read() as session:
        principal = access.principal_from_descriptor(session, descriptor, None, ws.id)
    assert principal.disabled and not policy.allows(principal, "read", "flows", ws)
