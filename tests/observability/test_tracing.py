"""One trace across two real linked servers, checked with the SDK's in-memory exporter.

Both servers run in this process (real uvicorn servers on loopback, each with its own store,
worker and link engine), so one in-memory exporter sees the spans of both.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flowlink.linking import protocol
from flowlink.linking.service import sync_path
from flowlink.observability import tracing
from tests.conftest import StartedServer, make_settings, start_live_server
from tests.linking.conftest import KeyMaker, public_pem_of

PARENT = """\
def handler(system, this, inputs):
    child = this.flow('child', {'n': inputs['n']}, remote='to-b')
    return this.success('parent done', **child.get('output_value'))
"""
CHILD = """\
def handler(system, this, inputs):
    grandchild = this.flow('grandchild', {'n': inputs['n']})
    return this.success('child done', **grandchild.get('output_value'))
"""
GRANDCHILD = """\
def handler(system, this, inputs):
    return this.success('grandchild done', doubled=inputs['n'] * 2)
"""


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    provider = TracerProvider()
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    assert tracing.setup(provider)
    try:
        yield provider, memory
    finally:
        tracing.shutdown()


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()


def apply(server: StartedServer, slug: str, flows: dict[str, str]) -> None:
    files = {"workspace.yml": f"name: {slug}\nslug: {slug}\n"}
    files.update({f"flows/{name}.py": script for name, script in flows.items()})
    ok(server.live.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files}))


def test_one_trace_from_an_api_call_through_a_link_to_a_grandchild(
    exporter: tuple[TracerProvider, InMemorySpanExporter],
    database_url: str,
    second_database_url: str,
    make_key: KeyMaker,
) -> None:
    provider, memory = exporter
    timings = {"link_refresh": 0.3, "link_poll": 2.0, "link_backoff_max": 1.0}
    a = start_live_server(make_settings(database_url, **timings))
    b = start_live_server(make_settings(second_database_url, **timings))
    try:
        apply(a, "ws-a", {"parent": PARENT, "child": CHILD})
        apply(b, "ws-b", {"grandchild": GRANDCHILD})
        key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
        ok(b.live.client.post("/api/v1/workspaces/ws-b/sync_config", json={
            "name": "from-a", "own_private_key": key_b.read_text(),
            "remote_public_key": public_pem_of(key_a),
        }), 201)  # fmt: skip
        ok(a.live.client.post("/api/v1/workspaces/ws-a/sync_config", json={
            "name": "to-b", "own_private_key": key_a.read_text(),
            "remote_public_key": public_pem_of(key_b),
            "remote_url": b.live.url + sync_path("ws-b", "from-a"),
        }), 201)  # fmt: skip
        deadline = time.monotonic() + 30
        while not ok(a.live.client.get("/api/v1/workspaces/ws-a/sync_config/to-b"))["state"].get(
            "connected"
        ):
            assert time.monotonic() < deadline, "the link did not connect"
            time.sleep(0.1)

        # The caller's own span: its traceparent header is continued by the server.
        with provider.get_tracer("test").start_as_current_span("caller") as caller:
            context = caller.get_span_context()
            header = f"00-{context.trace_id:032x}-{context.span_id:016x}-01"
            parent = ok(
                a.live.client.post(
                    "/api/v1/workspaces/ws-a/executions",
                    json={"flow": "parent", "inputs": {"n": 21}, "wait": 60},
                    headers={"traceparent": header},
                ),
                201,
            )
        assert parent["status"] == "success", parent
        assert parent["output_value"] == {"doubled": 42}
        trace_id = context.trace_id

        def spans_of_trace() -> list[ReadableSpan]:
            return [s for s in memory.get_finished_spans() if s.context.trace_id == trace_id]

        deadline = time.monotonic() + 10  # the last spans end as the endings are recorded
        while len([s for s in spans_of_trace() if s.name.startswith("execution ")]) < 3:
            assert time.monotonic() < deadline, [s.name for s in spans_of_trace()]
            time.sleep(0.05)
        spans = spans_of_trace()
        by_id = {s.context.span_id: s for s in spans}

        def one(name: str) -> ReadableSpan:
            found = [s for s in spans if s.name == name]
            assert len(found) == 1, (name, [s.name for s in spans])
            return found[0]

        request = one("POST /api/v1/workspaces/{ws}/executions")
        run_parent, run_child, run_grandchild = (
            one("execution parent"),
            one("execution child"),
            one("execution grandchild"),
        )
        chain = [caller, request, run_parent, run_child, run_grandchild]
        for upper, lower in itertools.pairwise(chain):
            assert lower.parent is not None, lower.name
            assert lower.parent.span_id == upper.get_span_context().span_id, (
                f"{lower.name} should be a child of {upper.name}"
            )
        assert run_parent.attributes["flowlink.workspace"] == "ws-a"
        assert run_child.attributes["flowlink.workspace"] == "ws-b"  # ran in the other server
        assert run_grandchild.attributes["flowlink.workspace"] == "ws-b"
        assert run_parent.attributes["flowlink.execution.id"] == parent["id"]
        correlation = {s.attributes["flowlink.correlation.id"] for s in chain[2:]}
        assert correlation == {parent["correlation_id"]}
        assert all(s.parent is None or s.parent.span_id in by_id for s in chain[2:])

        # Link exchanges have spans on both ends, joined by the traceparent header.
        exchanges = [s for s in memory.get_finished_spans() if s.name == "link exchange"]
        assert exchanges and all(s.attributes["flowlink.link"] == "ws-a/to-b" for s in exchanges)
        answered = {
            s.parent.span_id
            for s in memory.get_finished_spans()
            if s.name == "POST /api/v1/workspaces/{ws}/sync_config/{name}/sync" and s.parent
        }
        assert answered & {s.context.span_id for s in exchanges}
    finally:
        a.stop()
        b.stop()


def test_traceparent_is_only_sent_to_peers_that_accept_it() -> None:
    start = {
        "id": "m1",
        "type": "execution.start",
        "created_at": "2026-01-01T00:00:00Z",
        "origin_execution_id": "e1",
        "flow": "f",
        "inputs": {},
        "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
    }
    old_peer = protocol.for_peer([start], protocol.features_of(None))
    assert "traceparent" not in old_peer[0]
    assert "traceparent" in start  # the outbox copy is left alone
    new_peer = protocol.for_peer([start], protocol.features_of("traceparent, unknown"))
    assert new_peer[0]["traceparent"] == start["traceparent"]
    protocol.parse_envelope({"messages": new_peer})  # valid for a new peer
    with pytest.raises(Exception, match="traceparent"):
        protocol.parse_envelope({"messages": [{**start, "traceparent": "not-a-trace"}]})


def test_tracing_is_off_unless_the_otel_variables_ask() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}
    )
    assert tracing.current_traceparent() is None
    assert tracing.valid_traceparent("00-" + "a" * 32 + "-" + "b" * 16 + "-01")
    assert not tracing.valid_traceparent("00-" + "0" * 32 + "-" + "b" * 16 + "-01")
