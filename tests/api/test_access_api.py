"""Access control through a real server: login, cookies, CSRF, tokens, roles, denials."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from flowlink.store.models import Event, utcnow
from tests.access.helpers import PASSWORD, make_token, make_user, user_with_token
from tests.conftest import LiveServer

FLOW = "def handler(system, this, inputs):\n    return this.success('ok')\n"
ROLES_YML = """name: Alpha
slug: alpha
roles:
  reporter:
    - action: read
      subject: executions
      conditions:
        flow: reports-*
    - action: execute
      subject: executions
      conditions:
        flow: reports-*
    - action: read
      subject: workspace
"""


def apply(server: LiveServer, slug: str, yml: str, flows: dict[str, str] | None = None) -> Any:
    files = {"workspace.yml": yml, **{f"flows/{n}.py": s for n, s in (flows or {}).items()}}
    return server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})


@pytest.fixture
def alpha(live_server: LiveServer) -> LiveServer:
    flows = {"hello": FLOW, "reports-daily": FLOW}
    assert apply(live_server, "alpha", ROLES_YML, flows).status_code == 200
    assert (
        apply(live_server, "beta", "name: Beta\nslug: beta\n", {"hello": FLOW}).status_code == 200
    )
    return live_server


def as_token(server: LiveServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def error(response: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["error"]
    return body


def denials(server: LiveServer) -> list[dict[str, Any]]:
    with server.store.read() as session:
        rows = session.scalars(select(Event).where(Event.type == "access.denied")).all()
        return [{"payload": e.payload, "workspace_id": e.workspace_id} for e in rows]


# --- login, sessions, CSRF ------------------------------------------------------------------


def test_login_sets_http_only_cookie_and_cookie_works_for_reads(alpha: LiveServer) -> None:
    make_user(alpha.store, "ann", {"alpha": "viewer"})
    with httpx.Client(base_url=alpha.url) as browser:
        response = browser.post(
            "/api/v1/auth/login", json={"username": "ann", "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        cookies = response.headers.get_list("set-cookie")
        session_cookie = next(c for c in cookies if c.startswith("flowlink_session="))
        assert "HttpOnly" in session_cookie and "samesite=lax" in session_cookie.lower()
        csrf_cookie = next(c for c in cookies if c.startswith("flowlink_csrf="))
        assert "HttpOnly" not in csrf_cookie
        assert browser.get("/api/v1/workspaces/alpha").status_code == 200
        assert browser.get("/api/v1/auth/me").json()["user"] == "ann"
        # a viewer sees only alpha
        slugs = [w["slug"] for w in browser.get("/api/v1/workspaces").json()["items"]]
        assert slugs == ["alpha"]


def test_cookie_writes_need_the_csrf_token(alpha: LiveServer) -> None:
    make_user(alpha.store, "ed", {"alpha": "editor"})
    with httpx.Client(base_url=alpha.url) as browser:
        login = browser.post("/api/v1/auth/login", json={"username": "ed", "password": PASSWORD})
        csrf = login.json()["csrf_token"]
        assert browser.cookies.get("flowlink_csrf") == csrf
        url = "/api/v1/workspaces/alpha/settings/color"
        missing = browser.put(url, json={"value": "red"})
        assert missing.status_code == 403 and "CSRF" in error(missing)["message"]
        wrong = browser.put(url, json={"value": "red"}, headers={"X-CSRF-Token": "x" * 64})
        assert wrong.status_code == 403
        ok = browser.put(url, json={"value": "red"}, headers={"X-CSRF-Token": csrf})
        assert ok.status_code == 200, ok.text
        # logout needs the token too, then the cookie stops working
        assert browser.post("/api/v1/auth/logout").status_code == 403
        assert (
            browser.post("/api/v1/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
        )
        stale = httpx.Client(
            base_url=alpha.url, cookies={"flowlink_session": login.cookies["flowlink_session"]}
        )
        assert stale.get("/api/v1/workspaces/alpha").status_code == 401
        stale.close()


def test_bearer_requests_need_no_csrf_token(alpha: LiveServer) -> None:
    response = alpha.client.put("/api/v1/workspaces/alpha/settings/x", json={"value": 1})
    assert response.status_code == 200


def test_wrong_password_and_unknown_user_get_the_same_401(alpha: LiveServer) -> None:
    make_user(alpha.store, "bob")
    wrong = alpha.client.post(
        "/api/v1/auth/login", json={"username": "bob", "password": "nope-nope"}
    )
    unknown = alpha.client.post(
        "/api/v1/auth/login", json={"username": "nobody", "password": "nope-nope"}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert error(wrong)["message"] == error(unknown)["message"] == "wrong username or password"
    assert "set-cookie" not in wrong.headers


def test_disabled_user_cannot_log_in_and_tokens_stop(alpha: LiveServer) -> None:
    token = user_with_token(alpha.store, "dee", "alpha", "viewer")
    client = as_token(alpha, token)
    assert client.get("/api/v1/workspaces/alpha").status_code == 200
    assert alpha.client.patch("/api/v1/users/dee", json={"disabled": True}).status_code == 200
    assert client.get("/api/v1/workspaces/alpha").status_code == 401
    login = alpha.client.post("/api/v1/auth/login", json={"username": "dee", "password": PASSWORD})
    assert login.status_code == 401 and error(login)["message"] == "wrong username or password"
    client.close()


def test_repeated_failed_logins_are_throttled_with_retry_after(alpha: LiveServer) -> None:
    make_user(alpha.store, "tom")
    body = {"username": "tom", "password": "wrong-password"}
    codes = [alpha.client.post("/api/v1/auth/login", json=body).status_code for _ in range(5)]
    assert codes == [401] * 5
    blocked = alpha.client.post(
        "/api/v1/auth/login", json={"username": "tom", "password": PASSWORD}
    )
    assert blocked.status_code == 429
    assert int(blocked.headers["Retry-After"]) > 0
    # another user from the same address is not affected
    make_user(alpha.store, "una")
    ok = alpha.client.post("/api/v1/auth/login", json={"username": "una", "password": PASSWORD})
    assert ok.status_code == 200


# --- users ------------------------------------------------------------------------------------


def test_admin_creates_users_and_resets_passwords(alpha: LiveServer) -> None:
    created = alpha.client.post("/api/v1/users", json={"username": "carol"})
    assert created.status_code == 201, created.text
    password = created.json()["password"]
    assert "password_hash" not in created.json()
    assert (
        alpha.client.post(
            "/api/v1/auth/login", json={"username": "carol", "password": password}
        ).status_code
        == 200
    )
    reset = alpha.client.post("/api/v1/users/carol/password", json={})
    new_password = reset.json()["password"]
    assert new_password != password
    old = alpha.client.post("/api/v1/auth/login", json={"username": "carol", "password": password})
    assert old.status_code == 401
    dup = alpha.client.post("/api/v1/users", json={"username": "carol"})
    assert dup.status_code == 409
    short = alpha.client.post("/api/v1/users", json={"username": "dan", "password": "short"})
    assert short.status_code == 422 and error(short)["details"]["field"] == "password"


def test_only_admins_manage_users(alpha: LiveServer) -> None:
    token = user_with_token(alpha.store, "olga", "alpha", "owner")
    client = as_token(alpha, token)
    response = client.post("/api/v1/users", json={"username": "eve"})
    assert response.status_code == 403
    assert "organization admin" in error(response)["message"]
    client.close()


def test_passwords_are_stored_with_argon2(alpha: LiveServer) -> None:
    from flowlink.store.models import User

    make_user(alpha.store, "hash-check")
    with alpha.store.read() as session:
        stored = session.scalar(select(User.password_hash).where(User.username == "hash-check"))
    assert stored is not None and stored.startswith("$argon2id$") and PASSWORD not in stored


# --- tokens -----------------------------------------------------------------------------------


def test_token_is_shown_once_listed_without_secret_and_revocable(alpha: LiveServer) -> None:
    make_user(alpha.store, "tina", {"alpha": "editor"})
    login_token = make_token(alpha.store, "tina", "alpha", "editor")
    tina = as_token(alpha, login_token)
    created = tina.post(
        "/api/v1/tokens", json={"name": "ci", "workspace": "alpha", "role": "operator"}
    )
    assert created.status_code == 201, created.text
    secret = created.json()["token"]
    listed = tina.get("/api/v1/tokens").json()["items"]
    assert {t["name"] for t in listed} == {"tina-token", "ci"}
    assert secret not in str(listed) and all("token" not in t for t in listed)
    ci = as_token(alpha, secret)
    assert ci.get("/api/v1/workspaces/alpha/executions").status_code == 200
    assert tina.delete(f"/api/v1/tokens/{created.json()['id']}").status_code == 204
    revoked = ci.get("/api/v1/workspaces/alpha/executions")
    assert revoked.status_code == 401 and "revoked" in error(revoked)["message"]
    with alpha.store.read() as session:
        types = session.scalars(select(Event.type).where(Event.type.like("apikeys.%"))).all()
    assert sorted(types) == ["apikeys.created", "apikeys.deleted"]
    ci.close()
    tina.close()


def test_expired_token_is_401(alpha: LiveServer) -> None:
    make_user(alpha.store, "exp", {"alpha": "viewer"})
    token = make_token(
        alpha.store, "exp", "alpha", "viewer", expires_at=utcnow() + timedelta(seconds=1)
    )
    from flowlink.store.models import ApiToken

    with alpha.store.write() as session:
        for row in session.scalars(select(ApiToken).where(ApiToken.name == "exp-token")):
            row.expires_at = utcnow() - timedelta(seconds=1)
    client = as_token(alpha, token)
    response = client.get("/api/v1/workspaces/alpha")
    assert response.status_code == 401 and "expired" in error(response)["message"]
    client.close()


def test_token_for_workspace_a_on_workspace_b_is_404(alpha: LiveServer) -> None:
    token = user_with_token(alpha.store, "amy", "alpha", "owner")
    client = as_token(alpha, token)
    for path in ("/api/v1/workspaces/beta", "/api/v1/workspaces/beta/executions"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert error(response)["details"] == {"workspace": "beta"}
    # same answer as a workspace that does not exist at all
    assert client.get("/api/v1/workspaces/nope").status_code == 404
    assert [w["slug"] for w in client.get("/api/v1/workspaces").json()["items"]] == ["alpha"]
    client.close()


def test_token_above_own_role_is_403(alpha: LiveServer) -> None:
    token = user_with_token(alpha.store, "vic", "alpha", "viewer")
    client = as_token(alpha, token)
    for role in ("operator", "editor", "owner", "reporter"):
        response = client.post(
            "/api/v1/tokens", json={"name": "x", "workspace": "alpha", "role": role}
        )
        assert response.status_code == 403, (role, response.text)
        assert "exceed" in error(response)["message"]
    same = client.post("/api/v1/tokens", json={"name": "x", "workspace": "alpha", "role": "viewer"})
    assert same.status_code == 201
    org_wide = client.post("/api/v1/tokens", json={"name": "x"})
    assert org_wide.status_code == 403
    unknown = client.post(
        "/api/v1/tokens", json={"name": "x", "workspace": "alpha", "role": "boss"}
    )
    assert unknown.status_code == 422 and "boss" in error(unknown)["message"]
    client.close()


def test_custom_role_token_only_below_the_custom_role(alpha: LiveServer) -> None:
    token = user_with_token(alpha.store, "rita", "alpha", "reporter")
    client = as_token(alpha, token)
    assert (
        client.post(
            "/api/v1/tokens", json={"name": "x", "workspace": "alpha", "role": "viewer"}
        ).status_code
        == 403
    )
    client.close()
    editor = as_token(alpha, user_with_token(alpha.store, "eddy", "alpha", "editor"))
    # an editor may hand out the reporter role (it only reads and runs)
    assert (
        editor.post(
            "/api/v1/tokens", json={"name": "x", "workspace": "alpha", "role": "reporter"}
        ).status_code
        == 201
    )
    editor.close()


# --- roles ------------------------------------------------------------------------------------


def test_builtin_roles_allow_and_deny_with_reason_and_record_it(alpha: LiveServer) -> None:
    viewer = as_token(alpha, user_with_token(alpha.store, "vera", "alpha", "viewer"))
    assert viewer.get("/api/v1/workspaces/alpha/flows").status_code == 200
    denied = viewer.put("/api/v1/workspaces/alpha/flows/x", json={"script": FLOW})
    assert denied.status_code == 403
    assert error(denied)["message"] == "role 'viewer' may not create flows flow='x' in 'alpha'"
    run = viewer.post("/api/v1/workspaces/alpha/executions", json={"flow": "hello"})
    assert run.status_code == 403
    recorded = denials(alpha)
    assert len(recorded) == 2
    payload = recorded[0]["payload"]
    assert payload["action"] == "create" and payload["subject"] == "flows"
    assert payload["principal"]["name"] == "vera" and "token" not in str(payload).lower().replace(
        "tokenid", ""
    )
    viewer.close()
    operator = as_token(alpha, user_with_token(alpha.store, "otto", "alpha", "operator"))
    started = operator.post(
        "/api/v1/workspaces/alpha/executions", json={"flow": "hello", "wait": 20}
    )
    assert started.status_code == 201 and started.json()["status"] == "success"
    adhoc = operator.post("/api/v1/workspaces/alpha/executions", json={"script": FLOW})
    assert adhoc.status_code == 403
    assert operator.put("/api/v1/workspaces/alpha/settings/s", json={"value": 1}).status_code == 403
    operator.close()
    editor = as_token(alpha, user_with_token(alpha.store, "edna", "alpha", "editor"))
    assert editor.put("/api/v1/workspaces/alpha/settings/s", json={"value": 1}).status_code == 200
    assert (
        editor.put("/api/v1/workspaces/alpha/members/vera", json={"role": "owner"}).status_code
        == 403
    )
    assert editor.delete("/api/v1/workspaces/alpha").status_code == 403
    editor.close()


def test_custom_role_conditions_filter_and_deny(alpha: LiveServer) -> None:
    admin_run = alpha.client.post("/api/v1/workspaces/alpha/executions", json={"flow": "hello"})
    hello_id = admin_run.json()["id"]
    reporter = as_token(alpha, user_with_token(alpha.store, "rex", "alpha", "reporter"))
    ok = reporter.post(
        "/api/v1/workspaces/alpha/executions", json={"flow": "reports-daily", "wait": 20}
    )
    assert ok.status_code == 201, ok.text
    no = reporter.post("/api/v1/workspaces/alpha/executions", json={"flow": "hello"})
    assert no.status_code == 403 and "flow='hello'" in error(no)["message"]
    listed = reporter.get("/api/v1/workspaces/alpha/executions").json()["items"]
    assert {e["name"] for e in listed} == {"reports-daily"}
    assert reporter.get(f"/api/v1/workspaces/alpha/executions/{hello_id}").status_code == 403
    assert reporter.get(f"/api/v1/workspaces/alpha/executions/{ok.json()['id']}").status_code == 200
    assert reporter.get("/api/v1/workspaces/alpha/flows").status_code == 403
    reporter.close()


def test_unknown_action_subject_or_condition_in_a_rule_is_rejected_at_apply(
    alpha: LiveServer,
) -> None:
    before = alpha.client.get("/api/v1/workspaces/alpha").json()["version"]
    cases = {
        "action: destroy\n      subject: flows": "destroy",
        "action: read\n      subject: spaceships": "spaceships",
        "action: read\n      subject: flows\n      conditions:\n        colour: red": "colour",
    }
    for rule, name in cases.items():
        yml = f"name: Alpha\nslug: alpha\nroles:\n  bad:\n    - {rule}\n"
        response = apply(alpha, "alpha", yml)
        assert response.status_code == 422, response.text
        assert name in error(response)["message"], error(response)
    assert alpha.client.get("/api/v1/workspaces/alpha").json()["version"] == before


def test_members_are_managed_by_owners_within_their_rights(alpha: LiveServer) -> None:
    owner = as_token(alpha, user_with_token(alpha.store, "own", "alpha", "owner"))
    make_user(alpha.store, "newbie")
    granted = owner.put("/api/v1/workspaces/alpha/members/newbie", json={"role": "operator"})
    assert granted.status_code == 200
    members = owner.get("/api/v1/workspaces/alpha/members").json()["items"]
    assert {(m["user"], m["role"]) for m in members} == {("own", "owner"), ("newbie", "operator")}
    bad = owner.put("/api/v1/workspaces/alpha/members/newbie", json={"role": "chief"})
    assert bad.status_code == 422
    assert owner.delete("/api/v1/workspaces/alpha/members/newbie").status_code == 204
    owner.close()


def test_only_org_admin_creates_workspaces(alpha: LiveServer) -> None:
    owner = as_token(alpha, user_with_token(alpha.store, "ow", "alpha", "owner"))
    response = owner.post("/api/v1/workspaces", json={"slug": "gamma"})
    assert response.status_code == 403
    applied = owner.post(
        "/api/v1/workspaces/gamma/apply",
        json={"files": {"workspace.yml": "name: G\nslug: gamma\n"}},
    )
    assert applied.status_code == 403
    owner.close()


# --- flow_api ---------------------------------------------------------------------------------

READ_SECRET = """import flow_api

def handler(system, this, inputs):
    try:
        value = system.setting('secret').get('value')
    except flow_api.PermissionDeniedError as exc:
        return this.success('denied', reason=str(exc))
    return this.success('read', value=value)
"""
SPAWN = """def handler(system, this, inputs):
    child = this.flow('read-secret')
    return this.success('parent', child=child.get('output_value'))
"""
SECRET_ROLE = """name: Gamma
slug: gamma
roles:
  runner:
    - action: execute
      subject: executions
    - action: read
      subject: executions
    - action: read
      subject: settings
      conditions:
        setting: public-*
"""


def test_flow_api_calls_run_with_the_starting_users_rights(live_server: LiveServer) -> None:
    flows = {"read-secret": READ_SECRET, "spawn": SPAWN}
    assert apply(live_server, "gamma", SECRET_ROLE, flows).status_code == 200
    live_server.client.put("/api/v1/workspaces/gamma/settings/secret", json={"value": 42})
    admin_run = live_server.client.post(
        "/api/v1/workspaces/gamma/executions", json={"flow": "read-secret", "wait": 30}
    ).json()
    assert admin_run["output_value"] == {"value": 42}
    runner = as_token(live_server, user_with_token(live_server.store, "rue", "gamma", "runner"))
    denied = runner.post(
        "/api/v1/workspaces/gamma/executions", json={"flow": "read-secret", "wait": 30}
    ).json()
    assert denied["message"] == "denied", denied
    assert "setting='secret'" in denied["output_value"]["reason"]
    # a child execution inherits the starting user's rights
    parent = runner.post(
        "/api/v1/workspaces/gamma/executions", json={"flow": "spawn", "wait": 30}
    ).json()
    assert parent["status"] == "success", parent
    assert parent["output_value"]["child"]["reason"].startswith("permission denied")
    runner.close()
    recorded = [d for d in denials(live_server) if d["payload"]["subject"] == "settings"]
    assert len(recorded) == 2
    assert all(d["payload"]["principal"]["name"] == "rue" for d in recorded)


# --- events ----------------------------------------------------------------------------------

BILLING_YML = """name: Billing
slug: billing
roles:
  billing-reader:
    - action: read
      subject: workspace
    - action: read
      subject: events
      conditions:
        type: billing.*
    - action: create
      subject: events
      conditions:
        type: billing.*
"""


def test_events_a_role_may_not_read_are_filtered_from_search_and_stream(
    live_server: LiveServer,
) -> None:
    assert apply(live_server, "billing", BILLING_YML).status_code == 200
    token = user_with_token(live_server.store, "bill", "billing", "billing-reader")
    reader = as_token(live_server, token)
    with reader.stream(
        "GET", "/api/v1/workspaces/billing/events/stream", params={"after": 0}
    ) as stream:
        assert stream.status_code == 200
        for event_type in ("hr.salary", "billing.paid"):
            emitted = live_server.client.post(
                "/api/v1/workspaces/billing/events", json={"type": event_type, "payload": {}}
            )
            assert emitted.status_code in (200, 201), emitted.text
        seen = []
        for line in stream.iter_lines():
            if line.startswith("event: "):
                seen.append(line[len("event: ") :])
                if line == "event: billing.paid":
                    break
    assert seen == ["billing.paid"]
    found = reader.get("/api/v1/workspaces/billing/events").json()["items"]
    assert [e["type"] for e in found] == ["billing.paid"]
    everything = live_server.client.get("/api/v1/workspaces/billing/events").json()["items"]
    assert {"hr.salary", "billing.paid", "workspaces.created"} <= {e["type"] for e in everything}
    # creating is checked per type too
    denied = reader.post("/api/v1/workspaces/billing/events", json={"type": "hr.bonus"})
    assert denied.status_code == 403
    assert reader.post(
        "/api/v1/workspaces/billing/events", json={"type": "billing.refund"}
    ).status_code in (200, 201)
    reader.close()
