"""The sync endpoint is answered in front of the router, as the route would answer it.

``SyncEndpoint`` takes ``POST .../sync_config/{name}/sync`` before routing: the router
would pick the same route for that path; the answers (a signed exchange, the errors in the
API's shape) are those of the route; requests are counted under the route's template; any
other method on the path still goes through the router.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from flowlink.api.errors import PUBLIC_NOT_FOUND
from flowlink.api.linking import SyncEndpoint, sync
from flowlink.api.responses import DirectSends
from flowlink.errors import NotFound
from flowlink.linking import keys, signing
from flowlink.linking.protocol import envelope
from flowlink.linking.service import sync_path
from flowlink.observability import metrics
from tests.conftest import StartedServer
from tests.linking.conftest import KeyMaker, one_link, public_pem_of
from tests.observability.test_metrics import scrape, value

ROUTE = "/api/v1/workspaces/{ws}/sync_config/{name}/sync"


def test_the_router_would_pick_the_route_the_sync_endpoint_serves(
    answering: StartedServer,
) -> None:
    served = answering.running.server.config.app
    assert isinstance(served, DirectSends)  # the server's outermost layer
    app = served.app
    scope = {
        "type": "http",
        "method": "POST",
        "path": sync_path("ctl", "site-1"),
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "app": app,
        "fastapi_middleware_astack": AsyncExitStack(),  # as FastAPI's own middleware sets
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        raise AssertionError("the route raises its domain error to the handlers")

    with pytest.raises(NotFound):  # no workspace ``ctl`` here
        asyncio.run(app.router(scope, receive, send))
    assert scope["route"].endpoint is sync
    assert SyncEndpoint(app.router).route.path == scope["route"].path == ROUTE


def test_sync_answers_and_errors_are_the_routes(
    answering: StartedServer, make_key: KeyMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "link_label", metrics.LabelCap(1000))
    live = answering.live
    own, site_key = one_link(live, make_key, direction="controlling")
    trusted = {keys.fingerprint(k): k for k in keys.load_public_keys(public_pem_of(own))}
    url = live.url + sync_path("ctl", "site")
    before = scrape(live.client)

    body = json.dumps(envelope([], None)).encode()
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(site_key, "POST", url, headers, body)
    answer = httpx.post(url, content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"messages": []}
    assert answer.headers["content-length"] == str(len(answer.content))
    signing.verify_response(
        trusted, 200, answer.headers, answer.content, request_method="POST", request_url=url
    )
    # A replay, an unsigned request: 401 in the API's error shape, with its challenge.
    replayed = httpx.post(url, content=body, headers=headers, timeout=30)
    assert replayed.status_code == 401
    assert replayed.headers["www-authenticate"] == "Bearer"
    assert replayed.json()["error"]["details"] == {"reason": "replayed"}
    unsigned = httpx.post(url, content=body, headers={"content-type": "application/json"})
    assert unsigned.status_code == 401
    assert unsigned.json()["error"]["details"] == {"reason": "unsigned"}
    # An unknown link tells nothing about what exists.
    missing = httpx.post(live.url + sync_path("ctl", "nope"), content=body, headers=headers)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == PUBLIC_NOT_FOUND
    # Other methods on the path are the router's: 405 in the API's error shape.
    got = httpx.get(url)
    assert got.status_code == 405
    assert got.json()["error"]["code"] == "method_not_allowed"

    after = scrape(live.client)

    def delta(status: str, method: str = "POST") -> float:
        labels = {"method": method, "route": ROUTE, "status": status}
        name = "flowlink_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("200") == 1
    assert delta("401") == 2
    assert delta("404") == 1
    assert delta("405", "GET") == 1
