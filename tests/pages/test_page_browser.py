"""A page form in a real headless Chromium (Debian's package, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.pages.test_pages import apply, files

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _ensure_chromium() -> str | None:
    """Install Debian's chromium when missing (CI runs as root); why not, if it cannot be."""
    if os.path.exists(CHROMIUM):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and apt-get cannot install it here (not root)"
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            return f"{' '.join(command)} failed: {done.stderr[-500:]}"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _ensure_chromium()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


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
