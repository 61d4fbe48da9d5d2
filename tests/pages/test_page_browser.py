"""A page form in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

from typing import Any

from tests.conftest import LiveServer
from tests.pages.test_pages import apply, files


def test_page_form_runs_a_flow_in_the_browser(live_server: LiveServer, browser: Any) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    page = browser.new_page()
    try:
        page.goto(f"{live_server.url}/pages/shop/?who=browser")
        assert page.text_content("#who") == "browser"
        page.fill("#item", "<pen>")
        page.click("#add")
        page.wait_for_selector("#added")
        assert page.text_content("#added") == "added <pen>"
        page.fill("#item", "fail")
        page.click("#add")
        page.wait_for_selector("#error")
        assert page.text_content("#error") == "no such item"
    finally:
        page.close()
