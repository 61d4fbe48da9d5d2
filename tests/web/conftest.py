"""Console test fixtures: servers with users, logged-in HTTP clients."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx
import yaml

from tests.conftest import LiveServer
from tests.linking.servers import workspace_files

PASSWORD = "console-pass-1"
CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_in(html: str) -> str:
    """The first CSRF token of a console page's forms."""
    found = CSRF_INPUT.search(html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def web_login(url: str, username: str, password: str) -> httpx.Client:
    """An HTTP client logged in to the console through its login form."""
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("/login")
    answer = client.post(
        "/login",
        data={
            "csrf_token": csrf_in(page.text),
            "username": username,
            "password": password,
            "next": "/",
        },
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/", answer.text
    return client


@dataclass
class Team:
    """A workspace with users in three roles on a live server."""

    live: LiveServer
    ws: str

    def add_user(self, username: str, role: str | None) -> None:
        """Create a user with the test password and (optionally) a role in the workspace."""
        client = self.live.client
        made = client.post("/api/v1/users", json={"username": username, "password": PASSWORD})
        assert made.status_code == 201, made.text
        if role:
            put = client.put(
                f"/api/v1/workspaces/{self.ws}/members/{username}", json={"role": role}
            )
            assert put.status_code == 200, put.text


def make_team(
    live: LiveServer, ws: str, flows: dict[str, str], automations: dict[str, Any] | None = None
) -> Team:
    """Apply a workspace with these flows (and automations); add an operator and a viewer."""
    files = workspace_files(ws, flows)
    if automations:
        spec = yaml.safe_load(files["workspace.yml"])
        files["workspace.yml"] = yaml.safe_dump({**spec, "automations": automations})
    answer = live.client.post(f"/api/v1/workspaces/{ws}/apply", json={"files": files})
    assert answer.status_code == 200, answer.text
    team = Team(live, ws)
    team.add_user("olga", "operator")
    team.add_user("vic", "viewer")
    return team
