"""Regenerate the console screenshots in docs/img/ from a fresh demo server.

    .venv/bin/python docs/img/make_screenshots.py

Starts ``flowlink server --demo`` on a temporary store, runs a few demo flows and emits
events, then takes screenshots with Debian's chromium (``apt-get install chromium``)
driven by Playwright: 1280 px wide in light mode, and the execution page in dark mode
and at 390 px.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (the tests' launch)

FLOWLINK = [sys.executable, "-m", "flowlink.cli.main"]


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="flowlink-shots-"))
    env = {
        **os.environ,
        "FLOWLINK_DATABASE_URL": f"sqlite:///{folder}/flowlink.db",
        "FLOWLINK_CONFIG_DIR": str(folder),
        "FLOWLINK_SECRET_KEY": "screenshots",
    }
    port = 18765
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [*FLOWLINK, "server", "--demo", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/api/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the demo server did not start")
            time.sleep(0.2)
        login = json.loads((folder / "credentials.json").read_text())
        api = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {login['token']}"}, timeout=60
        )
        first = ""
        for names in (["Ada", "Grace"], ["Linus"], ["Barbara", "Edsger", "Frances"]):
            answer = api.post(
                "/api/v1/workspaces/demo/executions",
                json={"flow": "parent", "inputs": {"names": names}, "wait": 30},
            )
            first = first or answer.json()["id"]
        api.post("/api/v1/workspaces/demo/executions", json={"flow": "hello", "wait": 30})
        for name in ("ada", "grace", "linus"):
            api.post(
                "/api/v1/workspaces/demo/events",
                json={"type": "user.signedup", "payload": {"name": name, "plan": "team"}},
            )
        time.sleep(1.0)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for scheme, width, pages in (
                (
                    "light",
                    1280,
                    {
                        "console-home": "/",
                        "console-overview": "/w/demo",
                        "console-executions": "/w/demo/executions",
                        "console-execution": f"/w/demo/executions/{first}",
                        "console-activity": "/w/demo/activity",
                        "console-automations": "/w/demo/automations",
                        "console-flow": "/w/demo/flows/parent",
                    },
                ),
                ("dark", 1280, {"console-execution-dark": f"/w/demo/executions/{first}"}),
                ("light", 390, {"console-execution-mobile": f"/w/demo/executions/{first}"}),
            ):
                context = browser.new_context(
                    viewport={"width": width, "height": 800}, color_scheme=scheme
                )
                page = context.new_page()
                page.goto(f"{url}/login")
                page.get_by_label("User name").fill(login["user"])
                page.get_by_label("Password").fill(login["password"])
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{url}/")
                for name, path in pages.items():
                    page.goto(f"{url}{path}")
                    page.wait_for_timeout(300)
                    page.screenshot(path=str(HERE / f"{name}.png"), full_page=False)
                    print(f"docs/img/{name}.png")
                context.close()
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=20)


if __name__ == "__main__":
    main()
