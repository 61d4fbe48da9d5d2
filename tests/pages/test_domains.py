"""Custom domains through a real server: Host matching, nothing but pages, conflicts, rules."""

from __future__ import annotations

import pytest

from flowlink.workspaces.domains import DomainError, host_key, normalize_domain
from tests.conftest import LiveServer
from tests.pages.test_pages import anonymous, apply, files


def test_host_matching_is_case_port_and_idna_insensitive(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    with anonymous(live_server) as client:
        for host in ("ops.example.com", "OPS.Example.COM:8443", "ops.example.com."):
            page = client.get("/", headers={"Host": host})
            assert page.status_code == 200, (host, page.text)
            assert "<h1>Bob&#39;s &lt;Shop&gt;</h1>" in page.text
        feed = client.get("/feed", headers={"Host": "xn--bcher-kva.example"})
        assert feed.status_code == 200
        # only pages: not the API, not the /pages/ tree, not another workspace's pages
        for path in ("/api/v1/health", "/api/v1/workspaces", "/pages/shop/", "/openapi.json"):
            assert client.get(path, headers={"Host": "ops.example.com"}).status_code == 404
        assert client.get("/nope", headers={"Host": "ops.example.com"}).status_code == 404
        # an unknown host is the server itself
        assert client.get("/api/v1/health", headers={"Host": "other.example"}).status_code == 200
        # restricted pages log in on the custom domain itself
        members = client.get("/members", headers={"Host": "ops.example.com"})
        assert members.status_code == 303
        assert members.headers["location"] == "/_login?next=/members"
        assert client.get("/_login", headers={"Host": "ops.example.com"}).status_code == 200


def test_a_domain_claimed_by_another_workspace_is_refused(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    other = "name: Other\nslug: other\ncustomDomains: [new.example.org, OPS.example.com]\n"
    response = apply(live_server, "other", {"workspace.yml": other})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert "'ops.example.com' is already claimed by workspace 'shop'" in error["message"]
    assert error["details"]["field"] == "customDomains[1]"
    assert live_server.client.get("/api/v1/workspaces/other").status_code == 404
    # released by the owner, then free to claim
    released = files(**{"workspace.yml": files()["workspace.yml"].replace("Ops.Example.com, ", "")})
    assert apply(live_server, "shop", released).status_code == 200
    assert apply(live_server, "other", {"workspace.yml": other}).status_code == 200
    with anonymous(live_server) as client:
        page = client.get("/", headers={"Host": "ops.example.com"})
        assert page.status_code == 404  # "other" has no index page


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("*.example.com", "wildcards are not allowed"),
        ("10.0.0.1", "an IP address is not a domain"),
        ("::1", "an IP address is not a domain"),
        ("example.com:8080", "bare hostname"),
        ("https://example.com", "bare hostname"),
        ("example.com/x", "bare hostname"),
        ("example.com.", "trailing dot"),
        ("localhost", "localhost always names this machine"),
        ("app.localhost", "localhost always names this machine"),
        ("-bad.example.com", "must not start or end with a hyphen"),
        ("ex ample.com", "without spaces"),
    ],
)
def test_malformed_domains_name_the_rule(raw: str, rule: str) -> None:
    with pytest.raises(DomainError, match=rule.replace("*", r"\*")):
        normalize_domain(raw)


def test_apply_refuses_a_malformed_domain_naming_the_line(live_server: LiveServer) -> None:
    text = "name: X\nslug: x1\ncustomDomains:\n  - ok.example.com\n  - '*.example.com'\n"
    response = apply(live_server, "x1", {"workspace.yml": text})
    assert response.status_code == 422
    details = response.json()["error"]["details"]
    assert details["line"] == 5 and details["field"] == "customDomains[1]"
    assert "wildcards are not allowed" in details["message"]


def test_host_key() -> None:
    assert normalize_domain("Bücher.Example") == "xn--bcher-kva.example"
    assert host_key("BÜCHER.example:80") == "xn--bcher-kva.example"
    assert host_key("127.0.0.1:8080") is None
    assert host_key("[::1]:8080") is None
    assert host_key("localhost:8080") is None
    assert host_key("") is None


def test_a_deleted_workspace_releases_its_domains(live_server: LiveServer) -> None:
    assert apply(live_server, "shop", files()).status_code == 200
    assert live_server.client.delete("/api/v1/workspaces/shop").status_code == 204
    with anonymous(live_server) as client:
        # not a custom domain any more: the server itself answers, API included
        assert client.get("/api/v1/health", headers={"Host": "ops.example.com"}).status_code == 200
    other = "name: Other\nslug: other\ncustomDomains: [ops.example.com]\n"
    assert apply(live_server, "other", {"workspace.yml": other}).status_code == 200
