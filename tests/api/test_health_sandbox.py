"""``GET /api/v1/health`` and the server log tell how flow scripts are confined, and an
execution over its limit says so in its record."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
from anyio import to_thread

from flowlink.api.app import create_app
from flowlink.api.deps import ServerContext
from flowlink.store.engine import Store

from ..conftest import make_settings, start_live_server
from ..runtime.conftest import cgroups_expected
from ..runtime.test_cgroups import FOUR_CHILDREN

#: The store plays no part here: SQLite only (no PostgreSQL database is made for them).
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@SQLITE_ONLY
@pytest.mark.parametrize("use_cgroups", [True, False], ids=["cgroups", "rlimit"])
def test_health_reports_the_sandbox(
    database_url: str, use_cgroups: bool, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(database_url, runner_cgroups=use_cgroups, runner_memory_mb=300)
    with caplog.at_level(logging.INFO, logger="flowlink.executions.worker"):
        started = start_live_server(settings)
    try:
        client = started.live.client
        body = client.get("/api/v1/health").json()
        applied = client.post(
            "/api/v1/workspaces/limits/apply",
            json={"files": {"workspace.yml": "name: Limits\nslug: limits\n"}},
        )
        assert applied.status_code == 200, applied.text
        answer = client.post(
            "/api/v1/workspaces/limits/executions",
            json={"script": FOUR_CHILDREN, "wait": 120, "max_runtime": 60},
        )
        execution = answer.json()
    finally:
        started.stop()
    sandbox = body["sandbox"]
    assert body["status"] == "ok"
    assert sandbox["memory_mb"] == 300 and sandbox["processes"] == settings.runner_processes
    logged = [r.getMessage() for r in caplog.records if "runner sandbox" in r.getMessage()]
    assert len(logged) == 1, logged
    if use_cgroups and cgroups_expected():
        assert sandbox["limits"] in ("cgroup-v1", "cgroup-v2"), sandbox
        assert f"limits per execution by {sandbox['limits']}: 300 MB memory" in logged[0]
        # the execution as a whole went over: its record says which limit
        assert (execution["status"], execution["message"]) == (
            "error",
            "memory limit exceeded (300 MB)",
        ), execution
    elif not use_cgroups:
        # per process only: each child stays under 300 MB
        assert execution["status"] == "success", execution
        assert execution["output_value"]["together"] == 4, execution  # 400 MB held at once
        assert sandbox["limits"] == "rlimit"
        assert sandbox["limits_note"] == "cgroups disabled by configuration"
        assert "limits per process only" in logged[0]
        assert "cgroups disabled by configuration" in logged[0]


@SQLITE_ONLY
def test_health_without_a_worker_in_the_process(database_url: str) -> None:
    started = start_live_server(make_settings(database_url), with_worker=False)
    try:
        body = started.live.client.get("/api/v1/health").json()
    finally:
        started.stop()
    assert body["sandbox"] is None


@SQLITE_ONLY
def test_health_answers_while_every_api_thread_is_busy(store: Store) -> None:
    """Health reads nothing from the store: it answers on the event loop, not queued behind
    the requests that hold the API's threads (200 clients starting executions at once)."""
    app = create_app(ServerContext(store=store, settings=make_settings(store.url)))
    release = threading.Event()

    async def health_with_no_thread_free() -> int:
        to_thread.current_default_thread_limiter().total_tokens = 1
        busy = asyncio.ensure_future(to_thread.run_sync(release.wait))
        while to_thread.current_default_thread_limiter().borrowed_tokens < 1:
            await asyncio.sleep(0.01)
        try:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                async with asyncio.timeout(10):
                    answer = await client.get("/api/v1/health")
        finally:
            release.set()
            await busy
        return answer.status_code

    assert asyncio.run(health_with_no_thread_free()) == 200
