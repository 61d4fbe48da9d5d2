"""The console's access rules over plain HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from contextlib import closing
from datetime import timedelta

import httpx
import yaml
from sqlalchemy import update

from flowlink.store.models import UserSession, utcnow
from tests.conftest import LiveServer
from tests.linking.servers import workspace_files
from tests.web.conftest import csrf_in, make_team, web_login

WS = "guarded"
HELLO = """import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    return this.success("hi")
"""


def test_forms_need_a_csrf_token_and_the_role(live_server: LiveServer) -> None:
    team = make_team(live_server, WS, {"hello": HELLO})
    url = live_server.url
    with closing(web_login(url, "vic", "console-pass-1")) as viewer:
        page = viewer.get(f"/w/{WS}/flows/hello")
        assert page.status_code == 200
        assert 'id="run"' not in page.text
        csrf = csrf_in(page.text)
        for data in ({"inputs": "{}"}, {"inputs": "{}", "csrf_token": "0" * 64}):
            answer = viewer.post(f"/w/{WS}/flows/hello/run", data=data)
            assert answer.status_code == 403, answer.text
            assert "CSRF token" in answer.text
        forged = viewer.post(f"/w/{WS}/flows/hello/run", data={"csrf_token": csrf, "inputs": "{}"})
        assert forged.status_code == 403
        assert "text/html" in forged.headers["content-type"]
    denied = live_server.client.get(
        f"/api/v1/workspaces/{WS}/events", params={"types": "access.denied"}
    ).json()["items"]
    assert any(e["payload"]["principal"].get("name") == "vic" for e in denied)
    with closing(web_login(url, "olga", "console-pass-1")) as operator:
        csrf = csrf_in(operator.get(f"/w/{WS}/flows/hello").text)
        started = operator.post(
            f"/w/{WS}/flows/hello/run", data={"csrf_token": csrf, "inputs": '{"a": 1}'}
        )
        assert started.status_code == 303
        assert started.headers["location"].startswith(f"/w/{WS}/executions/")
        execution = started.headers["location"].rsplit("/", 1)[1]
        record = team.live.wait_for(WS, execution)
        assert record["input_value"] == {"a": 1} and record["status"] == "success"
        listed = operator.get(f"/w/{WS}/executions", params={"trigger": "console", "by": "olga"})
        assert execution in listed.text
        assert execution not in operator.get(f"/w/{WS}/executions?trigger=api").text
        # Links: only organization admins see and use the edit controls.
        links = operator.get(f"/w/{WS}/links")
        assert links.status_code == 200 and "Create link" not in links.text
        for path in (f"/w/{WS}/links", f"/w/{WS}/links/keypair"):
            forged = operator.post(path, data={"csrf_token": csrf, "name": "x"})
            assert forged.status_code == 403, forged.text
        # Another workspace's pages do not exist for a member of this one only.
        other = live_server.client.post("/api/v1/workspaces", json={"slug": "other"})
        assert other.status_code == 201
        assert operator.get("/w/other/executions").status_code == 404


def test_sessions_tampered_expired_and_logged_out(live_server: LiveServer) -> None:
    make_team(live_server, WS, {"hello": HELLO})
    url = live_server.url
    with httpx.Client(base_url=url, cookies={"flowlink_session": "forged"}) as forged:
        answer = forged.get(f"/w/{WS}/executions?status=error")
        assert answer.status_code == 303
        assert (
            answer.headers["location"] == "/login?next=%2Fw%2Fguarded%2Fexecutions%3Fstatus%3Derror"
        )
        assert forged.post("/logout", data={"csrf_token": "x"}).status_code == 303
    with closing(web_login(url, "olga", "console-pass-1")) as user:
        assert user.get("/").status_code == 200
        with live_server.store.write() as session:
            session.execute(update(UserSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        assert user.get("/").headers["location"] == "/login?next=%2F"
    with closing(web_login(url, "olga", "console-pass-1")) as user:
        csrf = csrf_in(user.get("/").text)
        cookie = user.cookies["flowlink_session"]
        assert user.post("/logout", data={"csrf_token": csrf}).headers["location"] == "/login"
        with httpx.Client(base_url=url, cookies={"flowlink_session": cookie}) as again:
            assert again.get("/").status_code == 303
    # The login form itself carries a CSRF token bound to a cookie.
    with httpx.Client(base_url=url) as anonymous:
        answer = anonymous.post(
            "/login", data={"username": "olga", "password": "console-pass-1", "csrf_token": "x"}
        )
        assert answer.status_code == 403
        # A local next only: no open redirect after login.
        token = csrf_in(anonymous.get("/login").text)
        answer = anonymous.post(
            "/login",
            data={
                "username": "olga",
                "password": "console-pass-1",
                "csrf_token": token,
                "next": "//evil.example/",
            },
        )
        assert answer.headers["location"] == "/"


def test_link_edit_form_keeps_keys_and_shows_errors_inline(live_server: LiveServer) -> None:
    from flowlink.linking.keys import generate_key_pair
    from tests.web.conftest import PASSWORD

    make_team(live_server, WS, {"hello": HELLO})
    own, remote = generate_key_pair(), generate_key_pair()
    made = live_server.client.post(
        f"/api/v1/workspaces/{WS}/sync_config",
        json={
            "name": "peer",
            "own_private_key": own.private_pem,
            "remote_public_key": remote.public_pem,
        },
    )
    assert made.status_code == 201, made.text
    answer = live_server.client.post(
        "/api/v1/users", json={"username": "root", "password": PASSWORD, "is_admin": True}
    )
    assert answer.status_code == 201
    with closing(web_login(live_server.url, "root", PASSWORD)) as admin:
        page = admin.get(f"/w/{WS}/links?edit=peer")
        assert "Save peer" in page.text and own.fingerprint in page.text
        assert "PRIVATE KEY" not in page.text and "PUBLIC KEY" not in page.text
        csrf = csrf_in(page.text)
        form = {
            "csrf_token": csrf,
            "editing": "peer",
            "remote_url": "https://peer.example/api/v1/workspaces/ops/sync_config/peer/sync",
            "sync_interval": "soon",
            "own_private_key": generate_key_pair().private_pem,
            "enabled": "on",
            "verify_ssl": "on",
        }
        failed = admin.post(f"/w/{WS}/links", data=form)
        assert failed.status_code == 422
        assert "sync_interval: a number of seconds" in failed.text
        assert 'value="soon"' in failed.text and "peer.example" in failed.text
        assert "PRIVATE KEY" not in failed.text
        saved = admin.post(
            f"/w/{WS}/links", data={**form, "sync_interval": "30", "own_private_key": ""}
        )
        assert saved.status_code == 303, re.findall(r'id="link-error">([^<]*)', saved.text)
    view = live_server.client.get(f"/api/v1/workspaces/{WS}/sync_config/peer").json()
    assert view["own_public_key_fingerprint"] == own.fingerprint  # empty key field: kept
    assert view["sync_interval"] == 30 and view["remote_url"].startswith("https://peer")


def test_unknown_paths_html_for_pages_json_for_the_api(live_server: LiveServer) -> None:
    page = httpx.get(f"{live_server.url}/no/such/page")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    api = httpx.get(f"{live_server.url}/api/v1/no-such-route")
    assert api.status_code == 404 and api.json()["error"]["code"] == "not_found"
    assert httpx.get(f"{live_server.url}/assets/console.css").status_code == 200
    assert "prefers-color-scheme: dark" in httpx.get(f"{live_server.url}/assets/highlight.css").text


def test_a_role_limited_to_some_flows_sees_only_their_runs(live_server: LiveServer) -> None:
    from tests.web.conftest import PASSWORD

    files = workspace_files("scoped", {"reports-daily": HELLO, "payroll": HELLO})
    spec = yaml.safe_load(files["workspace.yml"])
    spec["roles"] = {
        "reporter": [
            {"action": "read", "subject": "workspace"},
            {"action": "read", "subject": "flows", "conditions": {"flow": "reports-*"}},
            {"action": "read", "subject": "executions", "conditions": {"flow": "reports-*"}},
            {"action": "execute", "subject": "executions", "conditions": {"flow": "reports-*"}},
        ]
    }
    files["workspace.yml"] = yaml.safe_dump(spec)
    client = live_server.client
    assert client.post("/api/v1/workspaces/scoped/apply", json={"files": files}).is_success
    assert client.post("/api/v1/users", json={"username": "rita", "password": PASSWORD}).is_success
    assert client.put(
        "/api/v1/workspaces/scoped/members/rita", json={"role": "reporter"}
    ).is_success
    ids = {}
    for flow in ("reports-daily", "payroll"):
        made = client.post(
            "/api/v1/workspaces/scoped/executions", json={"flow": flow, "wait": 20}
        ).json()
        ids[flow] = made["id"]
    with closing(web_login(live_server.url, "rita", PASSWORD)) as rita:
        listed = rita.get("/w/scoped/executions").text
        assert ids["reports-daily"] in listed and ids["payroll"] not in listed
        assert rita.get(f"/w/scoped/executions/{ids['payroll']}").status_code == 403
        assert rita.get("/w/scoped/flows/payroll").status_code == 403
        flows = rita.get("/w/scoped/flows").text
        assert "reports-daily" in flows and "payroll" not in flows
        page = rita.get("/w/scoped/flows/reports-daily")
        assert 'id="run"' in page.text
        forged = rita.post("/w/scoped/flows/payroll/run", data={"csrf_token": csrf_in(page.text)})
        assert forged.status_code == 403


def test_admin_creates_and_disables_users(live_server: LiveServer) -> None:
    from tests.web.conftest import PASSWORD

    make_team(live_server, WS, {"hello": HELLO})
    client = live_server.client
    made = client.post(
        "/api/v1/users", json={"username": "root", "password": PASSWORD, "is_admin": True}
    )
    assert made.status_code == 201
    with closing(web_login(live_server.url, "olga", PASSWORD)) as olga:
        page = olga.get(f"/w/{WS}/access")
        assert "Create user" not in page.text
        forged = olga.post(
            f"/w/{WS}/access/users", data={"csrf_token": csrf_in(page.text), "new_username": "x"}
        )
        assert forged.status_code == 403
    with closing(web_login(live_server.url, "root", PASSWORD)) as root:
        csrf = csrf_in(root.get(f"/w/{WS}/access").text)
        dup = root.post(f"/w/{WS}/access/users", data={"csrf_token": csrf, "new_username": "olga"})
        assert dup.status_code == 409 and "already exists" in dup.text
        assert 'value="olga"' in dup.text
        created = root.post(
            f"/w/{WS}/access/users", data={"csrf_token": csrf, "new_username": "nina"}
        )
        password = re.search(r'id="new-password">([^<]+)<', created.text)
        assert created.status_code == 200 and password
        with closing(web_login(live_server.url, "nina", password.group(1))) as nina:
            assert nina.get("/").status_code == 200
            off = root.post(
                f"/w/{WS}/access/users/nina/disabled", data={"csrf_token": csrf, "disabled": "on"}
            )
            assert off.status_code == 303
            assert nina.get("/").status_code == 303  # a disabled user's session ends


def test_secret_settings_stay_masked_and_need_manage(live_server: LiveServer) -> None:
    team = make_team(live_server, WS, {"hello": HELLO})
    team.add_user("oscar", "owner")
    team.add_user("eddie", "editor")
    plain = "vendor-plain-value-0042"
    answer = live_server.client.put(
        f"/api/v1/workspaces/{WS}/settings/vendor", json={"value": plain, "secret": True}
    )
    assert answer.status_code == 200, answer.text
    stored = live_server.client.get(f"/api/v1/workspaces/{WS}/settings/vendor").json()
    with closing(web_login(live_server.url, "oscar", "console-pass-1")) as owner:
        page = owner.get(f"/w/{WS}/settings")
        assert page.status_code == 200
        assert "vendor" in page.text
        assert plain not in page.text
        assert stored["value"] == "********"
    live_server.client.put(f"/api/v1/workspaces/{WS}/settings/plain", json={"value": 1})
    with closing(web_login(live_server.url, "eddie", "console-pass-1")) as editor:
        csrf = csrf_in(editor.get(f"/w/{WS}/settings").text)
        # An editor may change plain settings but not a secret (it needs 'manage settings').
        answer = editor.post(
            f"/w/{WS}/settings", data={"csrf_token": csrf, "name": "plain", "value": "2"}
        )
        assert answer.status_code == 303, answer.text
        answer = editor.post(
            f"/w/{WS}/settings", data={"csrf_token": csrf, "name": "vendor", "value": '"x"'}
        )
        assert answer.status_code == 403, answer.text
    with closing(web_login(live_server.url, "oscar", "console-pass-1")) as owner:
        csrf = csrf_in(owner.get(f"/w/{WS}/settings").text)
        answer = owner.post(
            f"/w/{WS}/settings", data={"csrf_token": csrf, "name": "vendor", "value": '"new"'}
        )
        assert answer.status_code == 303, answer.text
    replaced = live_server.client.get(f"/api/v1/workspaces/{WS}/settings/vendor").json()
    assert replaced["secret"] is True and replaced["value"] == "********"
