"""The permission matrix: every route of the OpenAPI document x every built-in role.

A route that is not in ``EXPECTED`` fails the test: a new route needs a rule here (and one
in its handler) before it can ship.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from flowlink.api.app import create_app
from flowlink.api.deps import ServerContext
from flowlink.web.app import install as install_console
from tests.access.helpers import make_token, make_user
from tests.conftest import LiveServer

PRINCIPALS = ("admin", "owner", "editor", "operator", "viewer", "other", "none")
# A = allowed (got past authorization), D = 403, H = 404 (hidden), U = 401, P = public route
# authenticated by something else or nothing (not requested here; see its own tests).
ANY = "AAAAAAU"
READ = "AAAAAHU"
EXECUTE = "AAAADHU"
EDIT = "AAADDHU"
OWN = "AADDDHU"
ADMIN = "ADDDDDU"
REVOKE = "AAHHHHU"  # someone else's token: concealed unless you manage the workspace's tokens
PUBLIC = "P" * 7
SYNC_ADMIN = "ADDDDHU"  # in a workspace, but for the organization admin only

WS = "/api/v1/workspaces/{ws}"
EXPECTED: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/health"): PUBLIC,
    ("GET", "/api/v1/metrics"): PUBLIC,
    ("GET", "/api/v1/ready"): PUBLIC,
    ("GET", "/api/v1/workers"): ADMIN,
    ("POST", "/api/v1/auth/login"): PUBLIC,
    ("POST", "/api/v1/auth/logout"): ANY,
    ("GET", "/api/v1/auth/me"): ANY,
    ("GET", "/api/v1/workspaces"): ANY,
    ("POST", "/api/v1/workspaces"): ADMIN,
    ("GET", WS): READ,
    ("DELETE", WS): OWN,
    ("POST", WS + "/apply"): OWN,
    ("GET", WS + "/export"): READ,
    ("GET", WS + "/flows"): READ,
    ("GET", WS + "/flows/{name}"): READ,
    ("PUT", WS + "/flows/{name}"): EDIT,
    ("DELETE", WS + "/flows/{name}"): EDIT,
    ("GET", WS + "/settings"): READ,
    ("GET", WS + "/settings/{name}"): READ,
    ("PUT", WS + "/settings/{name}"): EDIT,
    ("DELETE", WS + "/settings/{name}"): EDIT,
    ("GET", WS + "/files"): READ,
    ("GET", WS + "/files/{path}"): READ,
    ("PUT", WS + "/files/{path}"): EDIT,
    ("DELETE", WS + "/files/{path}"): EDIT,
    ("POST", WS + "/executions"): EXECUTE,
    ("GET", WS + "/executions"): READ,
    ("POST", WS + "/executions/batch"): EXECUTE,
    ("GET", WS + "/executions/{execution_id}"): READ,
    ("GET", WS + "/executions/{execution_id}/logs"): READ,
    ("POST", WS + "/executions/{execution_id}/cancel"): EXECUTE,
    ("POST", WS + "/events"): EDIT,
    ("GET", WS + "/events"): READ,
    ("GET", WS + "/events/stream"): READ,
    ("POST", WS + "/webhooks/{automation}"): PUBLIC,
    ("PUT", WS + "/webhooks/{automation}"): PUBLIC,
    ("PATCH", WS + "/webhooks/{automation}"): PUBLIC,
    ("GET", WS + "/webhooks/{automation}"): PUBLIC,
    ("DELETE", WS + "/webhooks/{automation}"): PUBLIC,
    ("POST", WS + "/automations/{automation}/webhook_key"): OWN,
    ("GET", WS + "/pages"): READ,
    ("POST", WS + "/publish"): EDIT,
    ("GET", "/api/v1/apps"): ANY,
    ("GET", "/api/v1/apps/{app}/versions"): ANY,
    ("GET", WS + "/apps"): READ,
    ("PUT", WS + "/apps/{instance}"): EDIT,
    ("DELETE", WS + "/apps/{instance}"): EDIT,
    ("GET", "/api/v1/users"): ADMIN,
    ("POST", "/api/v1/users"): ADMIN,
    ("GET", "/api/v1/users/{username}"): ADMIN,
    ("PATCH", "/api/v1/users/{username}"): ADMIN,
    ("POST", "/api/v1/users/{username}/password"): ADMIN,
    ("GET", WS + "/members"): READ,
    ("PUT", WS + "/members/{username}"): OWN,
    ("DELETE", WS + "/members/{username}"): OWN,
    ("POST", "/api/v1/tokens"): "AAAAAHU",
    ("GET", "/api/v1/tokens"): ANY,
    ("DELETE", "/api/v1/tokens/{token_id}"): REVOKE,
    # Workspace links: only the organization admin changes sync configs; the sync endpoint
    # itself is authenticated by HTTP message signatures.
    ("GET", WS + "/sync_config"): READ,
    ("POST", WS + "/sync_config"): SYNC_ADMIN,
    ("GET", WS + "/sync_config/{name}"): READ,
    ("PATCH", WS + "/sync_config/{name}"): SYNC_ADMIN,
    ("DELETE", WS + "/sync_config/{name}"): SYNC_ADMIN,
    ("POST", WS + "/sync_config/{name}/sync"): PUBLIC,
}

FLOW = "def handler(system, this, inputs):\n    return this.success('ok')\n"
WORKSPACE_YML = """name: Matrix
slug: mx
automations:
  hook:
    flow: f
    when:
      endpoint: true
"""


def routes() -> list[tuple[str, str]]:
    """Every (method, path) of the OpenAPI document."""
    app = create_app(ServerContext(store=None, settings=None), [install_console])  # type: ignore[arg-type]
    found = [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if method in ("get", "post", "put", "patch", "delete")
    ]
    # Destructive routes last (the world is rebuilt after the workspace is deleted).
    return sorted(found, key=lambda r: (r[0] == "DELETE", r[1] == WS, r[1]))


def test_every_route_has_a_row() -> None:
    missing = [route for route in routes() if route not in EXPECTED]
    assert not missing, f"routes without an expected permission row: {missing}"
    # Rows for routes not served (yet) are allowed: the linking routes land separately.


class World:
    """Workspace ``mx`` with a flow, a setting, an execution, members and their tokens."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.tokens: dict[str, str | None] = {}
        self.execution_id = ""
        self.victim_token_id = ""

    def build(self) -> None:
        server = self.server
        files = {"workspace.yml": WORKSPACE_YML, "flows/f.py": FLOW}
        applied = server.client.post("/api/v1/workspaces/mx/apply", json={"files": files})
        assert applied.status_code == 200, applied.text
        if server.client.get("/api/v1/workspaces/other-ws").status_code == 404:
            server.client.post("/api/v1/workspaces", json={"slug": "other-ws"})
        server.client.put("/api/v1/workspaces/mx/settings/s", json={"value": 1})
        server.client.put("/api/v1/workspaces/mx/files/doc.txt", content=b"matrix")
        run = server.client.post("/api/v1/workspaces/mx/executions", json={"flow": "f"})
        self.execution_id = run.json()["id"]
        self.tokens = {"admin": server.token, "none": None}
        for role in ("owner", "editor", "operator", "viewer"):
            self.tokens[role] = self._member(f"m-{role}", "mx", role)
        self.tokens["other"] = self._member("m-other", "other-ws", "owner")
        self._member("victim", "mx", "viewer")
        tokens = server.client.get("/api/v1/tokens", params={"all": "true"}).json()["items"]
        self.victim_token_id = next(
            t["id"] for t in tokens if t["user"] == "victim" and t["state"] == "active"
        )

    def _member(self, username: str, slug: str, role: str) -> str:
        client = self.server.client
        if client.get(f"/api/v1/users/{username}").status_code == 404:
            make_user(self.server.store, username)
        client.put(f"/api/v1/workspaces/{slug}/members/{username}", json={"role": role})
        return make_token(self.server.store, username, slug, role)

    def request(self, principal: str, method: str, path: str) -> httpx.Response:
        url = (
            path.replace("{ws}", "mx")
            .replace("{name}", "f" if "/flows/" in path else "s")
            .replace("{execution_id}", self.execution_id)
            .replace("{username}", "victim")
            .replace("{token_id}", self.victim_token_id)
            .replace("{automation}", "hook")
            .replace("{app}", "mx")
            .replace("{instance}", "tb")
            .replace("{path}", "doc.txt")
        )
        token = self.tokens[principal]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        body = self.body(method, path)
        with httpx.Client(base_url=self.server.url, headers=headers, timeout=60) as client:
            if path.endswith("/stream"):
                with client.stream(method, url) as response:
                    if response.status_code >= 400:
                        response.read()
                    return response
            return client.request(method, url, json=body)

    def body(self, method: str, path: str) -> Any:
        unique = uuid.uuid4().hex[:8]
        bodies: dict[tuple[str, str], Any] = {
            ("POST", "/api/v1/workspaces"): {"slug": f"n-{unique}"},
            ("POST", WS + "/apply"): {
                "files": {"workspace.yml": WORKSPACE_YML, "flows/f.py": FLOW}
            },
            ("PUT", WS + "/flows/{name}"): {"script": FLOW},
            ("PUT", WS + "/settings/{name}"): {"value": 2},
            ("POST", WS + "/executions"): {"flow": "f"},
            ("POST", WS + "/executions/batch"): {"executions": [{"flow": "f"}]},
            ("POST", WS + "/events"): {"type": "matrix.test", "payload": {}},
            ("POST", "/api/v1/users"): {"username": f"u-{unique}"},
            ("PATCH", "/api/v1/users/{username}"): {"disabled": False},
            ("POST", "/api/v1/users/{username}/password"): {},
            ("PUT", WS + "/members/{username}"): {"role": "viewer"},
            ("POST", "/api/v1/tokens"): {"name": "matrix", "workspace": "mx", "role": "viewer"},
            ("POST", WS + "/sync_config"): {"name": f"s-{unique}"},
            ("PATCH", WS + "/sync_config/{name}"): {"enabled": True},
            ("POST", WS + "/publish"): {"version": f"1.0.{unique}"},
            ("PUT", WS + "/apps/{instance}"): {"app": "nope", "version": "1.0.0"},
        }
        return bodies.get((method, path))


def outcome(response: httpx.Response) -> str:
    """A, D, H or U for a response (A: authorization let it through)."""
    if response.status_code == 401:
        return "U"
    if response.status_code == 403:
        return "D"
    if response.status_code == 404:
        details = response.json().get("error", {}).get("details", {})
        if details == {"workspace": "mx"} or set(details) == {"token"}:
            return "H"
    return "A"


@pytest.mark.slow
def test_permission_matrix(live_server: LiveServer) -> None:
    world = World(live_server)
    world.build()
    failures = []
    for method, path in routes():
        expected = EXPECTED[(method, path)]
        for index, principal in enumerate(PRINCIPALS):
            if expected[index] == "P":
                continue
            response = world.request(principal, method, path)
            got = outcome(response)
            if got != expected[index]:
                failures.append(
                    f"{method} {path} as {principal}: expected {expected[index]}, got {got}"
                    f" ({response.status_code} {response.text[:160]})"
                )
            if (method, path) == ("DELETE", WS) and got == "A":
                world.build()
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("principal", ["admin", "viewer"])
def test_unknown_token_is_401_everywhere(live_server: LiveServer, principal: str) -> None:
    client = httpx.Client(
        base_url=live_server.url, headers={"Authorization": "Bearer fl_nope"}, timeout=30
    )
    for method, path in routes():
        if EXPECTED[(method, path)] == PUBLIC:
            continue
        url = path.replace("{ws}", "mx").replace("{name}", "x").replace("{username}", "x")
        url = url.replace("{execution_id}", "x").replace("{token_id}", "x")
        url = url.replace("{automation}", "x").replace("{app}", "x").replace("{instance}", "x")
        if url.endswith("/stream"):
            with client.stream(method, url) as response:
                assert response.status_code == 401, (method, path)
            continue
        assert client.request(method, url).status_code == 401, (method, path)
    client.close()
