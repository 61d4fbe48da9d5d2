"""Tracing switched on by the OTEL_* variables in real server processes: one trace across
two linked ``flowlink server`` processes (spans read from the console exporter's output)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest

from flowlink.linking.service import sync_path
from tests.linking.conftest import KeyMaker, public_pem_of
from tests.linking.servers import ServerFactory, start_all
from tests.observability.test_tracing import CHILD, GRANDCHILD, PARENT

LINK_TIMINGS = {
    "FLOWLINK_LINK_POLL": "2",
    "FLOWLINK_LINK_BACKOFF_MAX": "1",
    "FLOWLINK_LINK_REFRESH": "0.3",
}


def spans_in(log: Path) -> list[dict[str, Any]]:
    """The spans the console exporter wrote among the (one-line JSON) log lines."""
    text, spans, at = log.read_text(errors="replace"), [], 0
    decoder = json.JSONDecoder()
    while at < len(text):
        if text[at] != "{":
            at += 1
            continue
        try:
            item, end = decoder.raw_decode(text, at)
        except ValueError:
            at += 1
            continue
        if isinstance(item, dict) and "context" in item and "name" in item:
            spans.append(item)
        at = end
    return spans


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_otel_variables_trace_a_run_across_two_server_processes(
    server_factory: ServerFactory,
    database_url: str,
    second_database_url: str,
    make_key: KeyMaker,
) -> None:
    def env(name: str) -> dict[str, str]:
        return {
            **LINK_TIMINGS,
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": name,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "FLOWLINK_LOG_FORMAT": "json",
        }

    a = server_factory(database_url, "a", env=env("flowlink-a"))
    b = server_factory(second_database_url, "b", env=env("flowlink-b"))
    start_all(a, b)
    a.create_workspace("ws-a", flows={"parent": PARENT, "child": CHILD})
    b.create_workspace("ws-b", flows={"grandchild": GRANDCHILD})
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    assert b.client.post("/api/v1/workspaces/ws-b/sync_config", json={
        "name": "from-a", "own_private_key": key_b.read_text(),
        "remote_public_key": public_pem_of(key_a),
    }).status_code == 201  # fmt: skip
    assert a.client.post("/api/v1/workspaces/ws-a/sync_config", json={
        "name": "to-b", "own_private_key": key_a.read_text(),
        "remote_public_key": public_pem_of(key_b),
        "remote_url": b.url + sync_path("ws-b", "from-a"),
    }).status_code == 201  # fmt: skip
    deadline = time.monotonic() + 30
    while (
        not a.client.get("/api/v1/workspaces/ws-a/sync_config/to-b")
        .json()["state"]
        .get("connected")
    ):
        assert time.monotonic() < deadline, a.log_tail()
        time.sleep(0.1)
    parent = a.client.post(
        "/api/v1/workspaces/ws-a/executions",
        json={"flow": "parent", "inputs": {"n": 4}, "wait": 60},
    ).json()
    assert parent["status"] == "success", (parent, a.log_tail(), b.log_tail())
    a.stop()  # the exporter flushes as each process exits
    b.stop()

    spans_a, spans_b = spans_in(a.log_path), spans_in(b.log_path)

    def one(spans: list[dict[str, Any]], name: str) -> dict[str, Any]:
        found = [s for s in spans if s["name"] == name]
        assert len(found) == 1, (name, sorted({s["name"] for s in spans}))
        return found[0]

    request = one(spans_a, "POST /api/v1/workspaces/{ws}/executions")
    run_parent = one(spans_a, "execution parent")
    run_child = one(spans_b, "execution child")
    run_grandchild = one(spans_b, "execution grandchild")
    chain = [request, run_parent, run_child, run_grandchild]
    assert len({s["context"]["trace_id"] for s in chain}) == 1
    for upper, lower in itertools.pairwise(chain):
        assert lower["parent_id"] == upper["context"]["span_id"], (upper["name"], lower["name"])
    assert run_parent["resource"]["attributes"]["service.name"] == "flowlink-a"
    assert run_child["resource"]["attributes"]["service.name"] == "flowlink-b"
    assert run_child["attributes"]["flowlink.correlation.id"] == parent["correlation_id"]
