"""Two real servers linked from the console's Links page, a remote run, one correlation id."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import StartedServer, make_settings, start_live_server
from tests.linking.servers import workspace_files
from tests.web.conftest import PASSWORD

HI = """import flow_api


def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
    this.log("running on " + system.setting("side").get("value"))
    return this.success("hi from " + system.setting("side").get("value"))
"""
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[StartedServer, StartedServer]]:
    """Server A (to control) and B (controlled), each with workspace ``ops`` and an admin."""
    started = []
    for side in ("a", "b"):
        server = start_live_server(make_settings(f"sqlite:///{tmp_path / side}.db"))
        started.append(server)
        client = server.live.client
        files = workspace_files("ops", {"hi": HI}, settings={"side": side})
        assert client.post("/api/v1/workspaces/ops/apply", json={"files": files}).is_success
        made = client.post(
            "/api/v1/users", json={"username": "root", "password": PASSWORD, "is_admin": True}
        )
        assert made.status_code == 201, made.text
    yield started[0], started[1]
    for server in started:
        server.stop()


def _login(page: Any, url: str) -> None:
    page.goto(f"{url}/login")
    page.get_by_label("User name").fill("root")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{url}/")


@pytest.mark.slow
def test_link_two_servers_from_the_links_page_and_follow_a_remote_run(
    browser: Any, servers: tuple[StartedServer, StartedServer]
) -> None:
    a, b = (s.live for s in servers)
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    page_a, page_b = ctx_a.new_page(), ctx_b.new_page()
    for page in (page_a, page_b):
        page.set_default_timeout(20_000)
    try:
        _login(page_a, a.url)
        _login(page_b, b.url)
        # B: generate this end's key pair; its public key is shown once.
        page_b.goto(f"{b.url}/w/ops/links")
        page_b.get_by_label("Name").fill("from-a")
        page_b.get_by_role("button", name="Generate a key pair for this end").click()
        public_b = page_b.locator("#public-key").input_value()
        assert public_b.startswith("-----BEGIN PUBLIC KEY-----")
        assert page_b.get_by_label("Name").input_value() == "from-a"
        # A: the same, then create the controlling end with B's public key.
        page_a.goto(f"{a.url}/w/ops/links")
        page_a.get_by_label("Name").fill("to-b")
        page_a.get_by_role("button", name="Generate a key pair for this end").click()
        public_a = page_a.locator("#public-key").input_value()
        page_a.get_by_label("Remote URL").fill(
            f"{b.url}/api/v1/workspaces/ops/sync_config/from-a/sync"
        )
        page_a.get_by_label("Remote public key").fill("not a key")
        page_a.get_by_role("button", name="Create link").click()
        assert "remote_public_key" in page_a.locator("#link-error").inner_text()
        # The failed submit kept every field but the keys.
        assert page_a.get_by_label("Name").input_value() == "to-b"
        assert page_a.get_by_label("Remote URL").input_value().endswith("/from-a/sync")
        assert page_a.get_by_label("Remote public key").input_value() == ""
        assert "PRIVATE KEY" not in page_a.content()
        page_a.get_by_label("Remote public key").fill(public_b)
        page_a.get_by_role("button", name="Create link").click()
        if page_a.locator("#link-error").count():
            raise AssertionError(page_a.locator("#link-error").inner_text())
        page_a.wait_for_url("**saved=to-b**")
        # B: the controlled end with A's public key.
        page_b.get_by_label("Remote public key").fill(public_a)
        page_b.get_by_role("button", name="Create link").click()
        page_b.wait_for_url("**saved=from-a**")
        page_a.goto(f"{a.url}/w/ops/links")
        deadline = time.monotonic() + 30
        while page_a.locator("[data-link='to-b'] .badge.success").count() == 0:
            assert time.monotonic() < deadline, page_a.locator("[data-link='to-b']").inner_text()
            time.sleep(0.3)
            page_a.reload()
        # Run B's own flow from A's Run form.
        page_a.goto(f"{a.url}/w/ops/flows/hi")
        page_a.get_by_label("Where to run").select_option("to-b")
        page_a.get_by_label("Run the linked workspace's own flow of this name").check()
        page_a.get_by_role("button", name="Run", exact=True).click()
        page_a.wait_for_url(f"{a.url}/w/ops/executions/*")
        page_a.locator("#status.success, #status.error").wait_for(timeout=30_000)
        shown = page_a.locator("main").inner_text()
        assert page_a.locator("#status").inner_text() == "success", shown
        page_a.locator("#log").get_by_text("running on b").wait_for()
        assert page_a.locator("#message").inner_text() == "hi from b"
        # The correlation id leads to the chain on A, and to B's own run on B.
        correlation = page_a.locator("a[href*='correlationId=']").first.inner_text()
        page_a.locator("a[href*='correlationId=']").first.click()
        chain_a = page_a.locator("tr[data-chain]")
        assert chain_a.count() == 1 and "via to-b" in chain_a.inner_text()
        page_b.goto(f"{b.url}/w/ops/activity?correlationId={correlation}")
        chain_b = page_b.locator("tr[data-chain]")
        assert chain_b.count() == 1
        assert "from-a" in chain_b.inner_text() and "success" in chain_b.inner_text()
        assert page_b.locator("table.events tbody tr").count() >= 2
    finally:
        ctx_a.close()
        ctx_b.close()
