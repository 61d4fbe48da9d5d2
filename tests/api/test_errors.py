"""The catch-all error handler through a real server: an unexpected exception answers the JSON
error shape with an error id, and the same id is in the server's log with the traceback."""

from __future__ import annotations

import logging

import pytest

from flowlink.workspaces import service as workspaces
from tests.conftest import LiveServer

SECRET = "internal detail hunter2"


def _explode(*_args: object, **_kwargs: object) -> object:
    raise RuntimeError(SECRET)


def test_unexpected_error_is_json_500_with_an_id_that_is_in_the_log(
    live_server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(workspaces, "list_workspaces", _explode)
    with caplog.at_level(logging.ERROR, logger="flowlink.api.errors"):
        response = live_server.client.get("/api/v1/workspaces")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert error["code"] == "internal"
    error_id = error["details"]["error_id"]
    assert error_id.startswith("err_") and error_id in error["message"]
    assert response.headers["X-Error-Id"] == error_id
    # nothing of the exception reaches the client
    assert SECRET not in response.text and "Traceback" not in response.text
    assert "RuntimeError" not in response.text
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert len(logged) == 1, [r.getMessage() for r in caplog.records]
    assert "GET /api/v1/workspaces" in logged[0].getMessage()
    assert logged[0].exc_info is not None and logged[0].exc_info[1] is not None
    assert SECRET in str(logged[0].exc_info[1])
    # each error gets its own id; the server still answers afterwards
    again = live_server.client.get("/api/v1/workspaces").json()["error"]["details"]["error_id"]
    assert again != error_id
    monkeypatch.undo()
    assert live_server.client.get("/api/v1/workspaces").status_code == 200
