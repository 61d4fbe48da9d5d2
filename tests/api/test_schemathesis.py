"""Property-based run of the whole OpenAPI schema against a real server: no answer is a 5xx.

Every operation of ``/openapi.json`` gets generated requests (valid and invalid ones) with
real path values, so that requests reach the handlers instead of stopping at a 404: an
existing workspace, flow, setting, execution, automation, user, sync config and token.
Examples per operation and the total time are bounded (``EXAMPLES``, ``BUDGET_SECONDS``).
Destructive calls are pointed at throw-away names so the run keeps its fixtures.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from tests.api.test_input_hardening import WS, apply_workspace, make_sync_config
from tests.conftest import (
    LiveServer,
    _postgres_reason,
    make_settings,
    postgres_database,
    start_live_server,
)

EXAMPLES = 20
BUDGET_SECONDS = 40.0  # per store: SQLite, then PostgreSQL when FLOWLINK_TEST_POSTGRES_URL is set


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh store for the run: a SQLite file, or a PostgreSQL database when one is set."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
        return
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    with postgres_database("flowlink_fuzz") as url:
        yield url


@pytest.fixture(scope="module")
def fuzz_server(
    fuzz_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, dict]]:
    folder = tmp_path_factory.mktemp("fuzz-keys")
    settings = make_settings(fuzz_database, warm_runners=1)
    started = start_live_server(settings)
    server = started.live
    client = server.client
    apply_workspace(server)
    assert client.put(f"/api/v1/workspaces/{WS}/settings/greeting", json={"value": 1}).is_success
    execution = client.post(f"/api/v1/workspaces/{WS}/executions", json={"flow": "echo"})
    assert execution.status_code == 201, execution.text
    make_sync_config(server, folder)
    user = client.post("/api/v1/users", json={"username": "fuzzer"})
    assert user.status_code == 201, user.text
    token = client.post("/api/v1/tokens", json={"name": "fuzz"})
    assert token.status_code == 201, token.text
    values = {
        "ws": WS,
        "name": "echo",
        "execution_id": execution.json()["id"],
        "automation": "hook",
        "username": "fuzzer",
        "token_id": token.json()["id"],
    }
    yield server, values
    started.stop()


BODY_VALUES = {"flow": "echo", "type": "fuzz.happened", "remote": "edge", "workspace": WS}


def _path_values(path: str, method: str, values: dict[str, Any]) -> dict[str, list[Any]]:
    """Real values (to pick from) for the path parameters of one operation."""
    real = {name: [value] for name, value in values.items()}
    real["automation"] = ["hook", "open-hook"]
    if "/settings/" in path:
        real["name"] = ["greeting"]
    if "/sync_config/" in path:
        real["name"] = ["edge"]
    if "/flows/" in path and method == "PUT":
        real["name"] = ["fuzzed"]  # keep the echo flow the webhooks run
    if path.endswith("/apply"):
        real["ws"] = ["spare-apply"]  # an apply replaces the workspace: keep the fixture's
    if method == "DELETE":
        # Deleting the fixtures would turn the rest of the run into 404s: delete spares.
        for name in ("ws", "name", "username", "token_id", "automation"):
            real[name] = ["spare"]
    return real


def _operations(server: LiveServer) -> list[Any]:
    raw = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(raw)
    return [result.ok() for result in schema.get_all_operations()]


def _flow_failed(response: Any) -> bool:
    """A webhook's 502 when its flow failed: the documented answer, not a server error."""
    if response.status_code != 502:
        return False
    try:
        return bool(response.json()["error"]["code"] == "execution_failed")
    except (ValueError, KeyError, TypeError):
        return False


class Fuzzer:
    """Sends the generated requests of one run and collects the server errors."""

    def __init__(self, server: LiveServer, values: dict[str, Any]) -> None:
        self.server = server
        self.values = values
        self.deadline = time.monotonic() + BUDGET_SECONDS
        self.session = requests.Session()
        self.auth = {"Authorization": f"Bearer {server.token}"}
        self.calls = 0
        self.failures: list[str] = []

    def fuzz(self, operation: Any) -> None:
        """Up to ``EXAMPLES`` generated requests (valid and invalid) to one operation."""
        method = operation.method.upper()
        real = _path_values(operation.path, method, self.values)

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],  # failures are collected, not shrunk: bounded time
            suppress_health_check=list(HealthCheck),
        )
        @given(data=st.data())
        def run(data: st.DataObject) -> None:
            mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
            case = data.draw(operation.as_strategy(generation_mode=mode))
            for name in case.path_parameters or {}:
                if name in real:
                    case.path_parameters[name] = data.draw(st.sampled_from(real[name]))
            if isinstance(case.body, dict):
                # Real names half of the time, so that requests get past the lookups.
                for field, known in BODY_VALUES.items():
                    if field in case.body and data.draw(st.booleans()):
                        case.body[field] = known
                if "wait" in case.body:
                    case.body["wait"] = 0  # no long waits: the time is for coverage
            response = case.call(
                base_url=self.server.url, session=self.session, headers=self.auth, timeout=60
            )
            self.calls += 1
            if response.status_code >= 500 and not _flow_failed(response):
                self.failures.append(
                    f"{method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:300]} (query {case.query!r:.300}, body {case.body!r:.300})"
                )

        run()


@pytest.mark.slow
def test_no_server_error_anywhere(fuzz_server: tuple[LiveServer, dict[str, Any]]) -> None:
    server, values = fuzz_server
    operations = _operations(server)
    assert len(operations) > 40, "the schema lists the API's operations"
    fuzzer = Fuzzer(server, values)
    for operation in operations:
        if "/stream" in operation.path:
            continue  # an endless stream: covered by the events tests
        if time.monotonic() > fuzzer.deadline:
            break
        fuzzer.fuzz(operation)
    fuzzer.session.close()
    assert fuzzer.calls > 200, f"only {fuzzer.calls} requests were made"
    assert not fuzzer.failures, "\n".join(fuzzer.failures[:20])
