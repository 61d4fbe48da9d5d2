"""Prometheus metrics after real runs, parsed with prometheus-client's own parser."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flowlink.linking.service import sync_path
from flowlink.observability import metrics
from flowlink.store.engine import Store
from flowlink.workspaces import service as workspaces
from tests.conftest import LiveServer, make_settings, start_live_server
from tests.linking.conftest import KeyMaker, public_pem_of
from tests.linking.servers import ServerProcess

OK = "def handler(system, this, inputs):\n    return this.success('fine')\n"
FAIL = "def handler(system, this, inputs):\n    raise ValueError('no')\n"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: httpx.Client) -> Samples:
    """Every sample of ``/api/v1/metrics``, keyed by name and sorted labels."""
    response = client.get("/api/v1/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def make_workspace(server: LiveServer | ServerProcess, slug: str) -> None:
    files = {
        "workspace.yml": f"name: {slug}\nslug: {slug}\n",
        "flows/ok.py": OK,
        "flows/fail.py": FAIL,
    }
    response = server.client.post(f"/api/v1/workspaces/{slug}/apply", json={"files": files})
    assert response.status_code == 200, response.text


def run(server: LiveServer | ServerProcess, slug: str, flow: str) -> dict[str, object]:
    response = server.client.post(
        f"/api/v1/workspaces/{slug}/executions", json={"flow": flow, "wait": 30}
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


@pytest.fixture(autouse=True)
def fresh_label_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier tests in this process may have used up the workspace label cap."""
    monkeypatch.setattr(metrics, "workspace_label", metrics.LabelCap(1000))
    monkeypatch.setattr(metrics, "link_label", metrics.LabelCap(1000))


def test_metrics_count_runs_events_and_requests(live_server: LiveServer) -> None:
    slug = f"m-{uuid.uuid4().hex[:8]}"
    make_workspace(live_server, slug)
    before = scrape(live_server.client)
    for _ in range(3):
        assert run(live_server, slug, "ok")["status"] == "success"
    assert run(live_server, slug, "fail")["status"] == "error"
    response = live_server.client.post(
        f"/api/v1/workspaces/{slug}/events", json={"type": "custom.ping", "payload": {}}
    )
    assert response.status_code in (200, 201), response.text
    time.sleep(0.2)  # endings are recorded by the finisher right after the wait answers
    after = scrape(live_server.client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("flowlink_executions_started_total", workspace=slug) == 4
    assert delta("flowlink_executions_ended_total", workspace=slug, status="success") == 3
    assert delta("flowlink_executions_ended_total", workspace=slug, status="error") == 1
    assert delta("flowlink_execution_duration_seconds_count", workspace=slug) == 4
    assert delta("flowlink_queue_wait_seconds_count", workspace=slug) == 4
    assert delta("flowlink_execution_duration_seconds_bucket", workspace=slug, le="+Inf") == 4
    # created, started, ended per run, plus the custom event (the apply added more before)
    assert delta("flowlink_events_ingested_total", workspace=slug) >= 4 * 3 + 1
    route = "/api/v1/workspaces/{ws}/executions"
    assert delta("flowlink_http_requests_total", method="POST", route=route, status="201") == 4
    assert delta("flowlink_http_request_duration_seconds_count", method="POST", route=route) == 4
    assert value(after, "flowlink_queue_depth") == 0
    missing = live_server.client.get(f"/no/such/{uuid.uuid4().hex}")
    assert missing.status_code == 404
    final = scrape(live_server.client)
    assert not any("/no/such" in str(key) for key in final)
    assert (
        value(final, "flowlink_http_requests_total", method="GET", route="unmatched", status="404")
        >= 1
    )


def test_queue_depth_is_a_gauge_of_waiting_runs(store: Store, database_url: str) -> None:
    """Without a worker, queued runs stay queued: the gauge shows them, and only them."""
    from flowlink.executions import service as executions

    started = start_live_server(make_settings(database_url), with_worker=False)
    try:
        with store.write() as session:
            ws = workspaces.create_workspace(session, "queue")
            workspaces.put_flow(session, ws, "ok", OK)
            for _ in range(5):
                executions.create_execution(session, ws, flow_name="ok")
        samples = scrape(started.live.client)
        assert value(samples, "flowlink_queue_depth") == 5
    finally:
        started.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_rolled_back_work_counts_nothing(store: Store) -> None:
    with store.write() as session:
        ws = workspaces.create_workspace(session, "rolled")
    before = metrics.EVENTS_INGESTED.labels("rolled")._value.get()
    with pytest.raises(RuntimeError), store.write() as session:
        workspaces.put_flow(session, session.merge(ws), "ok", OK)
        from flowlink.events.service import record

        record(session, session.merge(ws), "custom.x", {})
        raise RuntimeError("roll back")
    assert metrics.EVENTS_INGESTED.labels("rolled")._value.get() == before
    with store.write() as session:
        from flowlink.events.service import record

        record(session, session.merge(ws), "custom.x", {})
    assert metrics.EVENTS_INGESTED.labels("rolled")._value.get() == before + 1


def test_label_cap_folds_the_rest_into_other() -> None:
    cap = metrics.LabelCap(3)
    assert [cap(f"ws{i}") for i in range(5)] == ["ws0", "ws1", "ws2", "_other", "_other"]
    assert cap("ws1") == "ws1"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_one_scrape_covers_server_and_worker_processes(database_url: str, tmp_path: Path) -> None:
    """A server without a worker and a separate ``flowlink worker`` share one metrics dir."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    server = ServerProcess(database_url, tmp_path / "server", env=env, worker=False)
    worker: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        make_workspace(server, "multi")
        worker = subprocess.Popen(
            [sys.executable, "-m", "flowlink.cli.main", "worker"],
            env={**server.env, **env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for _ in range(5):
            assert run(server, "multi", "ok")["status"] == "success"
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(server.client)
            ended = value(
                samples, "flowlink_executions_ended_total", workspace="multi", status="success"
            )
            if ended == 5 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert ended == 5, samples
        assert value(samples, "flowlink_executions_started_total", workspace="multi") == 5
        # the API's own requests are in the same exposition
        route = "/api/v1/workspaces/{ws}/executions"
        assert (
            value(samples, "flowlink_http_requests_total", method="POST", route=route, status="201")
            == 5
        )
        assert any(p.name.startswith("counter_") for p in shared.iterdir())
        # The worker's live gauges count while it runs and leave with it.
        deadline = time.monotonic() + 20
        while value(scrape(server.client), "flowlink_runners_warm") < 1:
            assert time.monotonic() < deadline, "the worker never reported warm runners"
            time.sleep(0.2)
        os.killpg(worker.pid, signal.SIGKILL)  # no goodbye: the registry shows it lost
        worker.wait(timeout=30)
        deadline = time.monotonic() + 30
        while value(scrape(server.client), "flowlink_runners_warm") != 0:
            assert time.monotonic() < deadline, "a killed worker's gauge lingers"
            time.sleep(0.5)
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, 9)
                worker.wait()
        server.close()


def test_link_metrics_state_latency_outbox_and_rejections(
    database_url: str, second_database_url: str, make_key: KeyMaker
) -> None:
    """A working link, a link to nowhere with queued starts, and an unsigned exchange."""
    timings = {"link_refresh": 0.3, "link_poll": 2.0, "link_backoff_max": 0.5}
    a = start_live_server(make_settings(database_url, **timings))
    b = start_live_server(make_settings(second_database_url, **timings))
    try:
        make_workspace(a.live, "ws-a")
        make_workspace(b.live, "ws-b")
        key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
        b_end = {"own_private_key": key_b.read_text(), "remote_public_key": public_pem_of(key_a)}
        a_end = {"own_private_key": key_a.read_text(), "remote_public_key": public_pem_of(key_b)}
        made = b.live.client.post(
            "/api/v1/workspaces/ws-b/sync_config", json={"name": "from-a", **b_end}
        )
        assert made.status_code == 201, made.text
        for name, url in (
            ("to-b", b.live.url + sync_path("ws-b", "from-a")),
            ("dead", "http://127.0.0.1:9" + sync_path("ws-x", "none")),
        ):
            made = a.live.client.post(
                "/api/v1/workspaces/ws-a/sync_config",
                json={"name": name, "remote_url": url, **a_end},
            )
            assert made.status_code == 201, made.text
        for _ in range(3):
            started = a.live.client.post(
                "/api/v1/workspaces/ws-a/executions", json={"flow": "ok", "remote": "dead"}
            )
            assert started.status_code == 201, started.text
        assert run(a.live, "ws-a", "ok")["status"] == "success"
        remote = a.live.client.post(
            "/api/v1/workspaces/ws-a/executions", json={"flow": "ok", "remote": "to-b", "wait": 30}
        )
        assert remote.json()["status"] == "success", remote.text
        before = value(scrape(b.live.client), "flowlink_link_rejections_total", reason="unsigned")
        unsigned = httpx.post(
            b.live.url + sync_path("ws-b", "from-a"), json={"messages": []}, timeout=10
        )
        assert unsigned.status_code == 401

        deadline = time.monotonic() + 20
        while True:
            samples = scrape(a.live.client)
            if value(samples, "flowlink_link_exchange_failures_total", link="ws-a/dead") >= 1:
                break
            assert time.monotonic() < deadline, "the dead link never failed"
            time.sleep(0.2)
        assert value(samples, "flowlink_link_connected", link="ws-a/to-b") == 1
        assert value(samples, "flowlink_link_connected", link="ws-a/dead") == 0
        assert value(samples, "flowlink_link_exchange_seconds_count", link="ws-a/to-b") >= 1
        assert value(samples, "flowlink_link_outbox_depth", link="ws-a/dead") == 3
        assert value(samples, "flowlink_link_outbox_depth", link="ws-a/to-b") == 0
        after = value(scrape(b.live.client), "flowlink_link_rejections_total", reason="unsigned")
        assert after == before + 1
    finally:
        a.stop()
        b.stop()
