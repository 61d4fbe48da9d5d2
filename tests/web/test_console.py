"""The web console in a real headless Chromium against a real server (SQLite store)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, make_settings, start_live_server
from tests.web.conftest import PASSWORD, Team, make_team

WS = "console"
SLOW = """import time
import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    for i in range(int(inputs.get("n", 5))):
        this.log(f"line {i}")
        time.sleep(float(inputs.get("pause", 0.3)))
    return this.success("done", count=int(inputs.get("n", 5)))
"""
FAIL = """import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    raise RuntimeError("this flow fails")
"""
SCRIPT_TAG = "<script>window.__xss = 1</script>"
IMG_TAG = '"><img src=x onerror="window.__xss = 2">'
XSS = f"""import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    this.log({SCRIPT_TAG!r})
    this.log({IMG_TAG!r})
    return this.success({IMG_TAG!r})
"""
PARENT = """import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    for n in (1, 2):
        this.flow("slow", {"n": n, "pause": 0})
    return this.success("parent done")
"""
EMITTER = """import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    this.emit("report.done", {"ok": True})
    return this.success("emitted")
"""
AUTOMATIONS = {
    "on-report": {"flow": "emitter", "when": {"events": ["report.requested"]}},
    "nightly": {"flow": "fail", "when": {"schedules": ["0 3 * * *"]}},
    "hook": {"flow": "slow", "when": {"endpoint": True}},
}
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    """One server on a SQLite store for the module, with a workspace, an operator, a viewer."""
    path: Path = tmp_path_factory.mktemp("console") / "flowlink.db"
    started = start_live_server(make_settings(f"sqlite:///{path}"))
    team = make_team(
        started.live,
        WS,
        {"slow": SLOW, "fail": FAIL, "xss": XSS, "emitter": EMITTER},
        AUTOMATIONS,
    )
    team.add_user("eddie", "editor")
    team.add_user("otto", "owner")
    yield team
    started.stop()


@pytest.fixture
def page(browser: Any, team: Team) -> Iterator[Any]:
    """A fresh browser context (no cookies) with one page; script dialogs fail the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    yield page
    context.close()
    assert not dialogs, f"a script ran: {dialogs}"


def login(page: Any, live: LiveServer, username: str, password: str = PASSWORD) -> None:
    """Log in through the form and land on the home page."""
    page.goto(f"{live.url}/login")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live.url}/")


def start(live: LiveServer, flow: str, inputs: dict[str, Any] | None = None) -> str:
    """Start an execution through the API; returns its id."""
    answer = live.client.post(
        f"/api/v1/workspaces/{WS}/executions", json={"flow": flow, "inputs": inputs or {}}
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


def test_login_wrong_password_then_logout_revokes(page: Any, team: Team) -> None:
    live = team.live
    page.goto(f"{live.url}/w/{WS}/executions")
    assert "/login?next=" in page.url
    page.get_by_label("User name").fill("olga")
    page.get_by_label("Password").fill("wrong-password")
    page.get_by_role("button", name="Log in").click()
    assert page.locator("#login-error").inner_text() == "wrong username or password"
    assert page.get_by_label("User name").input_value() == "olga"
    assert page.get_by_label("Password").input_value() == ""
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{live.url}/w/{WS}/executions")
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["flowlink_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax"
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(f"{live.url}/login")
    # The old cookie is dead on the server, not only forgotten by the browser.
    with httpx.Client(base_url=live.url, cookies={"flowlink_session": session["value"]}) as c:
        answer = c.get("/")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/login")


def test_run_form_shows_log_lines_live(page: Any, team: Team) -> None:
    live = team.live
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/flows/slow")
    page.get_by_label("Inputs (a JSON object)").fill("[1, 2")
    page.get_by_role("button", name="Run", exact=True).click()
    assert "not valid JSON" in page.locator("#inputs-error").inner_text()
    assert page.get_by_label("Inputs (a JSON object)").input_value() == "[1, 2"
    page.get_by_label("Inputs (a JSON object)").fill('{"n": 6, "pause": 0.4}')
    page.get_by_role("button", name="Run", exact=True).click()
    page.wait_for_url(f"{live.url}/w/{WS}/executions/*")
    log = page.locator("#log")
    log.get_by_text("line 1", exact=True).wait_for()
    # The second line came while the run was still going: it arrived live, not on reload.
    assert page.locator("#status").inner_text() == "running"
    assert "line 5" not in log.inner_text()
    log.get_by_text("line 5", exact=True).wait_for()
    page.locator("#status.success").wait_for()
    assert page.locator("#outputs").inner_text().count('"count": 6') == 1
    lines = log.locator(".line").all_inner_texts()
    assert lines == [f"line {i}" for i in range(6)]


def test_cancel_a_run(page: Any, team: Team) -> None:
    live = team.live
    login(page, live, "olga")
    execution = start(live, "slow", {"n": 200, "pause": 0.1})
    page.goto(f"{live.url}/w/{WS}/executions/{execution}")
    page.locator("#log").get_by_text("line 2", exact=True).wait_for()
    page.get_by_role("button", name="Cancel").click()
    page.locator("#status.cancelled").wait_for()
    assert live.wait_for(WS, execution)["status"] == "cancelled"


def test_filter_executions_and_rows_update_live(page: Any, team: Team) -> None:
    live = team.live
    failed = start(live, "fail")
    passed = start(live, "slow", {"n": 1, "pause": 0})
    live.wait_for(WS, failed)
    live.wait_for(WS, passed)
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/executions")
    page.get_by_label("Status").select_option("error")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**status=error**")
    statuses = page.locator("table.executions [data-status]").all_inner_texts()
    assert statuses and set(statuses) == {"error"}
    assert page.locator(f"tr[data-execution='{failed}']").count() == 1
    assert page.locator(f"tr[data-execution='{passed}']").count() == 0
    page.get_by_label("Started by").fill("nobody")
    page.get_by_role("button", name="Filter").click()
    assert "no user 'nobody'" in page.get_by_role("alert").inner_text()
    assert page.get_by_label("Started by").input_value() == "nobody"
    page.goto(f"{live.url}/w/{WS}/executions?trigger=api&by=admin")
    assert page.locator(f"tr[data-execution='{failed}']").count() == 1
    page.goto(f"{live.url}/w/{WS}/executions?trigger=console")
    assert page.locator(f"tr[data-execution='{failed}']").count() == 0
    page.goto(f"{live.url}/w/{WS}/executions?afterDate=2999-01-01")
    assert page.locator("table.executions tr.empty").count() == 1

    page.goto(f"{live.url}/w/{WS}/executions?flow=slow")
    page.locator("html[data-live=open]").wait_for(state="attached")
    fresh = start(live, "slow", {"n": 3, "pause": 0.3})
    row = page.locator(f"tr[data-execution='{fresh}']")
    row.locator(".badge.running").wait_for()
    row.locator(".badge.success").wait_for()
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1


def test_viewer_sees_no_run_button_and_a_forged_run_gets_403(page: Any, team: Team) -> None:
    live = team.live
    login(page, live, "vic")
    page.goto(f"{live.url}/w/{WS}/flows/slow")
    assert page.get_by_role("heading", name="Flow slow").count() == 1
    assert page.get_by_role("button", name="Run", exact=True).count() == 0
    csrf = page.locator("form.logout input[name=csrf_token]").input_value()
    before = len(live.client.get(f"/api/v1/workspaces/{WS}/executions").json()["items"])
    forged = page.request.post(
        f"{live.url}/w/{WS}/flows/slow/run", form={"csrf_token": csrf, "inputs": "{}"}
    )
    assert forged.status == 403
    assert "may not execute executions" in forged.text()
    after = live.client.get(f"/api/v1/workspaces/{WS}/executions").json()["items"]
    assert len(after) == before


def test_log_lines_and_page_parameters_render_as_text(page: Any, team: Team) -> None:
    live = team.live
    execution = start(live, "xss")
    live.wait_for(WS, execution)
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/executions/{execution}")
    assert page.locator("#log .line").all_inner_texts() == [SCRIPT_TAG, IMG_TAG]
    assert page.locator("#message").inner_text() == IMG_TAG
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__xss") is None

    page.goto(f"{live.url}/w/{WS}/executions?flow={IMG_TAG}")
    assert page.get_by_label("Flow").input_value() == IMG_TAG
    page.goto(f"{live.url}/w/{WS}/flows/{SCRIPT_TAG}")
    assert SCRIPT_TAG in page.locator("main").inner_text()
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.__xss") is None


def test_tampered_cookie_leads_to_login(page: Any, team: Team) -> None:
    live = team.live
    login(page, live, "olga")
    cookie = next(c for c in page.context.cookies() if c["name"] == "flowlink_session")
    page.context.add_cookies([{**cookie, "value": cookie["value"][:-2] + "xx"}])
    page.goto(f"{live.url}/w/{WS}/flows")
    assert page.get_by_role("heading", name="Log in to flowlink").count() == 1
    assert "/login?next=" in page.url


def test_narrow_screen_and_keyboard(browser: Any, team: Team) -> None:
    live = team.live
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    try:
        page.goto(f"{live.url}/login")
        assert page.evaluate("document.activeElement.id") == "username"
        page.keyboard.type("olga")
        page.keyboard.press("Tab")
        page.keyboard.type(PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(f"{live.url}/")
        page.goto(f"{live.url}/w/{WS}/executions")
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"the page is {width}px wide at 390px"
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    finally:
        context.close()


def emit(live: LiveServer, event_type: str, payload: Any) -> dict[str, Any]:
    """Emit a custom event through the API."""
    answer = live.client.post(
        f"/api/v1/workspaces/{WS}/events", json={"type": event_type, "payload": payload}
    )
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_activity_filters_live_tail_and_payload_as_text(page: Any, team: Team) -> None:
    live = team.live
    emit(live, "order.placed", {"item": SCRIPT_TAG, "note": IMG_TAG})
    emit(live, "order.shipped", {"item": "book"})
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/activity")
    page.get_by_label("Types").fill("order.placed")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url("**types=order.placed**")
    rows = page.locator("table.events tbody tr")
    assert rows.count() == 1
    shown = rows.first.inner_text()
    assert SCRIPT_TAG in shown and json.dumps(IMG_TAG) in shown
    assert page.locator("main img").count() == 0
    assert page.locator("svg rect.bar").count() == 48
    page.locator("html[data-live=open]").wait_for(state="attached")
    emit(live, "order.shipped", {"item": "ignored by the filter"})
    fresh = emit(live, "order.placed", {"item": "live one"})
    page.locator(f"tr[data-event='{fresh['id']}']").wait_for()
    assert rows.count() == 2
    assert "ignored by the filter" not in page.locator("table.events").inner_text()
    assert page.evaluate("window.__xss") is None

    page.get_by_label("After").fill("yesterday")
    page.get_by_role("button", name="Search").click()
    assert "afterDate must be an ISO 8601" in page.locator("#filter-error").inner_text()
    assert page.get_by_label("After").input_value() == "yesterday"
    assert page.get_by_label("Types").input_value() == "order.placed"


def test_activity_correlation_chain_and_cloudevents_download(page: Any, team: Team) -> None:
    live = team.live
    parent = live.client.post(
        f"/api/v1/workspaces/{WS}/executions",
        json={
            "script": PARENT,
            "name": "parent",
            "inputs": {},
        },
    ).json()
    live.wait_for(WS, parent["id"])
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/executions/{parent['id']}")
    page.get_by_role("link", name=parent["correlation_id"]).click()
    page.wait_for_url("**correlationId=**")
    chain = page.locator("tr[data-chain]")
    assert chain.count() == 3  # the parent and its two children
    assert page.locator("tr[data-chain] .badge.success").count() == 3
    with page.expect_download() as info:
        page.get_by_role("link", name="Download as CloudEvents JSON").click()
    batch = json.loads(Path(info.value.path()).read_text())
    assert batch and all(e["specversion"] == "1.0" for e in batch)
    assert {e["correlationid"] for e in batch} == {parent["correlation_id"]}
    assert "executions.ended" in {e["type"] for e in batch}


def test_settings_masked_edited_and_shown_as_text(page: Any, team: Team) -> None:
    live = team.live
    put = live.client.put(
        f"/api/v1/workspaces/{WS}/settings/api_token", json={"value": "sk-very-secret"}
    )
    assert put.status_code == 200, put.text
    login(page, live, "eddie")
    page.goto(f"{live.url}/w/{WS}/settings")
    assert "sk-very-secret" not in page.content()
    assert "(masked)" in page.locator("tr[data-setting='api_token']").inner_text()
    page.get_by_label("Name").fill("bad name!")
    page.get_by_label("Value (JSON; anything else is kept as text)").fill(IMG_TAG)
    page.get_by_role("button", name="Save").click()
    assert "setting" in page.locator("#setting-error").inner_text()
    assert page.get_by_label("Name").input_value() == "bad name!"
    assert page.get_by_label("Value (JSON; anything else is kept as text)").input_value() == IMG_TAG
    page.get_by_label("Name").fill("banner")
    page.get_by_role("button", name="Save").click()
    page.wait_for_url("**saved=banner")
    assert json.dumps(IMG_TAG) in page.locator("tr[data-setting='banner']").inner_text()
    assert page.locator("main img").count() == 0
    assert page.evaluate("window.__xss") is None


def test_overview_charts_and_window(page: Any, team: Team) -> None:
    live = team.live
    failed = start(live, "fail")
    live.wait_for(WS, failed)
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}")
    assert page.locator("svg[role=img]").count() == 2
    assert page.locator(f"tr[data-execution='{failed}']").count() == 1
    page.get_by_label("Window").select_option("1h")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url("**window=1h")
    assert page.locator("svg rect.bar").count() == 96
    page.goto(f"{live.url}/w/{WS}?window=%3Cscript%3E")
    assert "window: one of 1h, 24h, 7d" in page.get_by_role("alert").inner_text()


def test_automations_graph_cron_and_webhook_key(page: Any, team: Team) -> None:
    live = team.live
    login(page, live, "vic")
    page.goto(f"{live.url}/w/{WS}/automations")
    for key in (
        "event:report.requested",
        "automation:on-report",
        "flow:emitter",
        "event:report.done",
        "schedule:0 3 * * *",
        "webhook:hook",
        "flow:slow",
    ):
        assert page.locator(f"svg a[data-node='{key}']").count() == 1, key
    assert page.locator("svg path.edge").count() == 7
    firings = page.locator("#automation-nightly time").all_inner_texts()
    assert len(firings) == 5 and all(t.endswith("T03:00:00.000Z") for t in firings)
    assert page.get_by_role("button", name="Rotate webhook key of hook").count() == 0
    page.locator("svg a[data-node='flow:emitter']").click()
    page.wait_for_url(f"{live.url}/w/{WS}/flows/emitter")

    page.context.clear_cookies()
    login(page, live, "otto")
    page.goto(f"{live.url}/w/{WS}/automations")
    page.get_by_role("button", name="Rotate webhook key of hook").click()
    key = page.locator("#new-key").inner_text()
    answer = httpx.post(
        f"{live.url}/api/v1/workspaces/{WS}/webhooks/hook?async=true",
        headers={"X-Flowlink-Key": key},
        json={"n": 1, "pause": 0},
    )
    assert answer.status_code == 202, answer.text
    page.goto(f"{live.url}/w/{WS}/automations")
    assert page.locator("#new-key").count() == 0


def test_access_members_tokens_and_denials(page: Any, team: Team) -> None:
    live = team.live
    team.add_user("newbie", None)
    login(page, live, "otto")
    page.goto(f"{live.url}/w/{WS}/access")
    page.get_by_label("User", exact=True).fill("ghost")
    page.get_by_role("button", name="Set role").click()
    assert "ghost" in page.locator("#access-error").inner_text()
    assert page.get_by_label("User", exact=True).input_value() == "ghost"
    page.get_by_label("User", exact=True).fill("newbie")
    page.get_by_label("Role", exact=True).select_option("viewer")
    page.get_by_role("button", name="Set role").click()
    assert page.locator("tr[data-member='newbie']").inner_text().split("\t")[1] == "viewer"
    page.get_by_label("Token name").fill("ci")
    page.get_by_label("Token role").select_option("operator")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("#new-token").inner_text()
    headers = {"Authorization": f"Bearer {secret}"}
    assert httpx.get(f"{live.url}/api/v1/auth/me", headers=headers).status_code == 200
    page.goto(f"{live.url}/w/{WS}/access")
    assert secret not in page.content()
    page.get_by_role("button", name="Revoke ci").click()
    assert httpx.get(f"{live.url}/api/v1/auth/me", headers=headers).status_code == 401
    assert "operator" in page.locator("dl.grid").inner_text()  # roles with their rules
    # A denial shows with its reason.
    page.context.clear_cookies()
    login(page, live, "vic")
    page.goto(f"{live.url}/w/{WS}/settings")
    page.goto(f"{live.url}/w/{WS}/flows/slow")
    csrf = page.locator("form.logout input[name=csrf_token]").input_value()
    page.request.post(f"{live.url}/w/{WS}/flows/slow/run", form={"csrf_token": csrf})
    page.goto(f"{live.url}/w/{WS}/access")
    assert "may not execute executions" in page.locator("table.denials").inner_text()
    assert page.get_by_role("button", name="Set role").count() == 0


@pytest.mark.slow
def test_children_tree_updates_live_and_pages_read_without_javascript(
    browser: Any, page: Any, team: Team
) -> None:
    live = team.live
    parent = live.client.post(
        f"/api/v1/workspaces/{WS}/executions",
        json={
            "script": PARENT.replace('{"n": n, "pause": 0}', '{"n": 1, "pause": 4 / n}'),
            "name": "parent",
        },
    ).json()
    deadline = time.monotonic() + 20
    while not live.client.get(f"/api/v1/workspaces/{WS}/executions/{parent['id']}").json()[
        "children"
    ]:
        assert time.monotonic() < deadline, "no child started"
        time.sleep(0.05)
    login(page, live, "olga")
    page.goto(f"{live.url}/w/{WS}/executions/{parent['id']}")
    first = page.locator("#children li").first
    assert first.locator("[data-status]").inner_text() in ("queued", "running")
    first.locator(".badge.success").wait_for()
    page.locator("#status.success").wait_for()

    quiet = browser.new_context(java_script_enabled=False)
    try:
        plain = quiet.new_page()
        plain.goto(f"{live.url}/login")
        plain.get_by_label("User name").fill("olga")
        plain.get_by_label("Password").fill(PASSWORD)
        plain.get_by_role("button", name="Log in").click()
        plain.wait_for_url(f"{live.url}/")
        plain.goto(f"{live.url}/w/{WS}/executions/{parent['id']}")
        assert plain.locator("#status").inner_text() == "success"
        assert plain.locator("#children li").count() == 2
        plain.goto(f"{live.url}/w/{WS}/activity?correlationId={parent['correlation_id']}")
        assert plain.locator("tr[data-chain]").count() == 3
    finally:
        quiet.close()
