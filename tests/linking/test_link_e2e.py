"""Workspace links end to end: two real flowlink servers, each its own process and store.

A link is a sync config in a workspace of server A and one in a workspace of server B. Most
tests share one pair of servers per store backend (``pair``, started once per module, since
starting two servers costs seconds); each test makes its own workspaces and deletes its link
ends at teardown (``linker``), so nothing carries over. The TLS test starts its own servers.
Faults (kills, cuts, restarts mid-run) are tested elsewhere; here B is only stopped and
started again once, to watch the link state.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from flowlink.linking import keys, signing
from flowlink.linking.messages import StartMessage
from flowlink.linking.protocol import envelope
from flowlink.linking.service import sync_path
from flowlink.store.engine import make_engine, migrate
from tests.conftest import (
    POSTGRES_URL,
    _admin_execute,
    _database_url,
    _postgres_reason,
    _postgres_template,
)
from tests.linking.conftest import KeyMaker, public_pem_of
from tests.linking.servers import ServerFactory, ServerProcess, make_tls, start_all

T = TypeVar("T")
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

CHILD = """\
def handler(system, this, inputs):
    this.log('child line', inputs.get('n'))
    return this.success('child done', doubled=inputs.get('n', 0) * 2)
"""
PARENT = """\
def handler(system, this, inputs):
    child = this.flow(inputs['child'], {'n': inputs['n']}, **inputs['how'])
    return this.success('parent done', **child.get('output_value'))
"""
ECHO = """\
def handler(system, this, inputs):
    return this.success('echo', got=inputs.get('x'))
"""
OWN = """\
def handler(system, this, inputs):
    return this.success('own flow of b', who='b', got=inputs.get('x'))
"""
MISSING_PARENT = """\
def handler(system, this, inputs):
    this.flow('no-such-flow', {}, remote=inputs['link'], use_remote_flow=True)
    return this.success('unreachable')
"""
SLEEPER = """\
import time

def handler(system, this, inputs):
    this.log('sleeping')
    time.sleep(inputs.get('seconds', 60))
    return this.success('woke up')
"""
SAVE_SETTING = """\
def handler(system, this, inputs):
    system.setting('x').save(inputs.get('value', 1))
    return this.success('saved')
"""
SSL_OFF_WARNING = "TLS certificate verification is OFF"


# --- servers, shared per module and backend -------------------------------------------------


@pytest.fixture(scope="module")
def two_servers_env() -> dict[str, str]:
    """Small link timings: short long polls, quick back-off and connector refresh."""
    return {
        "FLOWLINK_LINK_POLL": "2",
        "FLOWLINK_LINK_BACKOFF_MAX": "1",
        "FLOWLINK_LINK_REFRESH": "0.3",
        "FLOWLINK_LINK_TIMEOUT": "10",
    }


@contextlib.contextmanager
def _two_stores(backend: str, folder: Path) -> Iterator[tuple[str, str]]:
    """Two clean, migrated stores of one backend."""
    if backend == "sqlite":
        urls = [f"sqlite:///{folder / f'store-{n}.db'}" for n in ("a", "b")]
        for url in urls:
            engine = make_engine(url)
            migrate(engine)
            engine.dispose()
        yield urls[0], urls[1]
        return
    reason = _postgres_reason()
    if reason:
        pytest.skip(reason)
    names = [f"flowlink_e2e_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    try:
        for name in names:
            _admin_execute(f'CREATE DATABASE "{name}" TEMPLATE "{_postgres_template()}"')
        yield _database_url(POSTGRES_URL, names[0]), _database_url(POSTGRES_URL, names[1])
    finally:
        for name in names:
            _admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def pair(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    two_servers_env: dict[str, str],
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Servers A and B on their own stores of one backend, shared by this module's tests."""
    folder = tmp_path_factory.mktemp(f"pair-{request.param}")
    with _two_stores(str(request.param), folder) as (url_a, url_b):
        a = ServerProcess(url_a, folder / "a", name="a", env=two_servers_env)
        b = ServerProcess(url_b, folder / "b", name="b", env=two_servers_env)
        try:
            start_all(a, b)
            yield a, b
        finally:  # before the stores are dropped
            a.close()
            b.close()


# --- polling and API helpers ----------------------------------------------------------------


def eventually(probe: Callable[[], T | None], what: str, timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {value})")
        time.sleep(0.05)


def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    """The JSON body of a response that must have ``status``."""
    assert response.status_code == status, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return dict(response.json())


def execution(server: ServerProcess, ws: str, execution_id: str) -> dict[str, Any]:
    """One execution's record (with script and children)."""
    return ok(server.client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}"))


def executions_of(server: ServerProcess, ws: str) -> list[dict[str, Any]]:
    """The workspace's executions, newest first."""
    return list(
        ok(server.client.get(f"/api/v1/workspaces/{ws}/executions", params={"limit": 200}))["items"]
    )


def log_lines(server: ServerProcess, ws: str, execution_id: str) -> list[str]:
    """The log lines of an execution."""
    body = ok(server.client.get(f"/api/v1/workspaces/{ws}/executions/{execution_id}/logs"))
    return [str(item["line"]) for item in body["items"]]


def events(server: ServerProcess, ws: str, **params: str) -> list[dict[str, Any]]:
    """Events of a workspace, newest first (``types=``, ``correlationId=`` ...)."""
    query = {"limit": "200", **params}
    return list(ok(server.client.get(f"/api/v1/workspaces/{ws}/events", params=query))["items"])


def by_origin(
    server: ServerProcess, ws: str, origin_id: str, trigger: str = "link"
) -> dict[str, Any] | None:
    """The execution in ``ws`` started (or copied) for an execution of the other workspace."""
    for item in executions_of(server, ws):
        started = item.get("trigger") or {}
        if started.get("type") == trigger and started.get("originExecutionId") == origin_id:
            return item
    return None


def wait_by_origin(
    server: ServerProcess,
    ws: str,
    origin_id: str,
    trigger: str = "link",
    *,
    status: tuple[str, ...] = (),
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Wait for ``by_origin`` to find the execution (in one of ``status``, when given)."""

    def probe() -> dict[str, Any] | None:
        found = by_origin(server, ws, origin_id, trigger)
        if found and (not status or found["status"] in status):
            return found
        return None

    return eventually(probe, f"{trigger} execution for {origin_id} in {ws} {status}", timeout)


def start_remote(
    server: ServerProcess, ws: str, remote: str, flow: str, wait: float | None = None, **extra: Any
) -> dict[str, Any]:
    """POST an execution with ``remote`` (and ``wait``); returns the local mirror's record."""
    body: dict[str, Any] = {"flow": flow, "remote": remote, **extra}
    if wait is not None:
        body["wait"] = wait
    return ok(server.client.post(f"/api/v1/workspaces/{ws}/executions", json=body), 201)


def public_key_text(private: Path) -> str:
    """The public key as the tool that made the private key wrote it (ssh-keygen: ``.pub``)."""
    openssh = Path(f"{private}.pub")
    return openssh.read_text() if openssh.exists() else public_pem_of(private)


# --- links ----------------------------------------------------------------------------------


@dataclass
class End:
    """One end of a link: a sync config in a workspace of a server."""

    server: ServerProcess
    ws: str
    name: str

    @property
    def endpoint(self) -> str:
        """The full URL of this end's sync endpoint (the other end's ``remote_url``)."""
        return self.server.url + sync_path(self.ws, self.name)

    @property
    def path(self) -> str:
        """The API path of the sync config."""
        return f"/api/v1/workspaces/{self.ws}/sync_config/{self.name}"

    def view(self) -> dict[str, Any]:
        """GET the sync config."""
        return ok(self.server.client.get(self.path))

    def patch(self, **fields: Any) -> dict[str, Any]:
        """PATCH fields of the sync config."""
        return ok(self.server.client.patch(self.path, json=fields))


@dataclass
class Link:
    """The two ends: ``a`` (on server A) and ``b`` (on server B)."""

    a: End
    b: End


@dataclass
class Linker:
    """Makes links and deletes their ends at teardown (which stops their connectors)."""

    made: list[End] = field(default_factory=list)

    def __call__(
        self,
        a: ServerProcess,
        ws_a: str,
        b: ServerProcess,
        ws_b: str,
        key_a: Path,
        key_b: Path,
        *,
        name_a: str = "to-b",
        name_b: str = "from-a",
        reverse: bool = False,
        a_fields: dict[str, Any] | None = None,
        b_fields: dict[str, Any] | None = None,
    ) -> Link:
        """Create both ends of a link in which A controls B.

        A connects to B unless ``reverse`` (then B connects, as behind a NAT: B's end has the
        ``remote_url`` and direction ``controlled``, A's end none and ``controlling``). The
        answering end is made first, so the connecting end never meets a missing config.
        """
        end_a, end_b = End(a, ws_a, name_a), End(b, ws_b, name_b)
        fields_a: dict[str, Any] = {
            "name": name_a,
            "own_private_key": key_a.read_text(),
            "remote_public_key": public_key_text(key_b),
        }
        fields_b: dict[str, Any] = {
            "name": name_b,
            "own_private_key": key_b.read_text(),
            "remote_public_key": public_key_text(key_a),
        }
        if reverse:
            fields_a["direction"] = "controlling"
            fields_b.update(remote_url=end_a.endpoint, direction="controlled")
            order = [(end_a, fields_a | (a_fields or {})), (end_b, fields_b | (b_fields or {}))]
        else:
            fields_a["remote_url"] = end_b.endpoint
            order = [(end_b, fields_b | (b_fields or {})), (end_a, fields_a | (a_fields or {}))]
        for end, fields in order:
            ok(
                end.server.client.post(f"/api/v1/workspaces/{end.ws}/sync_config", json=fields),
                201,
            )
            self.made.append(end)
        return Link(end_a, end_b)

    def close(self) -> None:
        """Delete every end made (connecting ends first), ignoring servers that are down."""
        for end in reversed(self.made):
            with contextlib.suppress(httpx.HTTPError, RuntimeError):
                end.server.client.delete(end.path)


@pytest.fixture
def linker() -> Iterator[Linker]:
    """The ``link(a, ws_a, b, ws_b, key_a, key_b, ...)`` helper; ends deleted at teardown."""
    made = Linker()
    yield made
    made.close()


@pytest.fixture
def uid() -> str:
    """A short unique suffix for this test's workspace slugs on the shared servers."""
    return uuid.uuid4().hex[:8]


# --- 1. remote runs in both directions --------------------------------------------------------


def _check_remote_child(
    here: ServerProcess,
    ws_here: str,
    there: ServerProcess,
    ws_there: str,
    parent: dict[str, Any],
    child_flow: str,
    n: int,
) -> None:
    """The parent ran a child in the other workspace: check both sides of it."""
    assert parent["status"] == "success", (parent, here.log_tail(), there.log_tail())
    assert parent["output_value"] == {"doubled": 2 * n}
    detail = execution(here, ws_here, parent["id"])
    (child_id,) = detail["children"]
    child = execution(here, ws_here, child_id)
    assert child["mirrored"] is True
    assert child["status"] == "success"
    assert child["output_value"] == {"doubled": 2 * n}
    assert child["name"] == child_flow
    assert child["started_at"] and child["ended_at"]
    assert any(f"child line {n}" in line for line in log_lines(here, ws_here, child_id))

    remote = wait_by_origin(there, ws_there, child_id, status=("success",))
    remote_detail = execution(there, ws_there, remote["id"])
    assert remote_detail["script"] == CHILD  # the calling workspace's script was shipped
    assert remote_detail["mirrored"] is False
    assert remote_detail["trigger"]["originExecutionId"] == child_id
    assert remote_detail["output_value"] == {"doubled": 2 * n}
    assert any(f"child line {n}" in line for line in log_lines(there, ws_there, remote["id"]))
    # No flow resource was created over there: the run carries its own script.
    assert there.client.get(f"/api/v1/workspaces/{ws_there}/flows/{child_flow}").status_code == 404

    correlation = child["correlation_id"]
    assert correlation and remote_detail["correlation_id"] == correlation
    assert parent["correlation_id"] == correlation
    # Each side has its own events of the run (the mirror's start too, even when the first
    # update it gets is the end).
    sides = (
        (here, ws_here, child_id, {"executions.created", "executions.started", "executions.ended"}),
        (there, ws_there, remote["id"], {"executions.started", "executions.ended"}),
    )
    for server, ws, own_id, expected in sides:
        found = events(server, ws, correlationId=correlation)
        assert found, f"no events with correlation id {correlation} on {server.name}"
        assert all(e["source"].get("correlationId") == correlation for e in found)
        own = {e["type"] for e in found if e["source"].get("executionId") == own_id}
        assert expected <= own, (server.name, own)


def test_remote_runs_in_both_directions(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """A runs a child in B over an openssl-keyed link, and B one in A over an ssh-keygen one
    (OpenSSH private key format, ``remote_workspace_name=``): outputs, logs, trigger, script,
    correlation ids and events line up on both sides."""
    a, b = pair
    ws_a, ws_b = f"both-a-{uid}", f"both-b-{uid}"
    a.create_workspace(ws_a, flows={"parent": PARENT, "child-a": CHILD})
    b.create_workspace(ws_b, flows={"parent": PARENT, "child-b": CHILD})
    linker(a, ws_a, b, ws_b, make_key("openssl-genrsa"), make_key("openssl-genpkey"))
    # The second link: B controls A, B connects; B's own key is in OpenSSH format.
    linker(
        b,
        ws_b,
        a,
        ws_a,
        make_key("ssh-keygen-openssh"),
        make_key("ssh-keygen-pem"),
        name_a="to-a",
        name_b="from-b",
    )

    parent_a = a.run(
        ws_a, "parent", {"child": "child-a", "n": 3, "how": {"remote": "to-b"}}, timeout=30
    )
    _check_remote_child(a, ws_a, b, ws_b, parent_a, "child-a", 3)

    how = {"remote_workspace_name": "to-a"}
    parent_b = b.run(ws_b, "parent", {"child": "child-b", "n": 5, "how": how}, timeout=30)
    _check_remote_child(b, ws_b, a, ws_a, parent_b, "child-b", 5)


# --- 2. use_remote_flow -----------------------------------------------------------------------


def test_use_remote_flow_runs_the_remote_flow_or_fails_naming_it(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """``use_remote_flow`` runs B's own flow (API: ``remote`` + ``wait``); a flow B does not
    have ends the local child in error naming it, and a waiting parent in error."""
    a, b = pair
    ws_a, ws_b = f"own-a-{uid}", f"own-b-{uid}"
    a.create_workspace(ws_a, flows={"parent": MISSING_PARENT})
    b.create_workspace(ws_b, flows={"own": OWN})
    linker(a, ws_a, b, ws_b, make_key("openssl-genrsa"), make_key("ssh-keygen-pem"))

    done = start_remote(a, ws_a, "to-b", "own", wait=30, use_remote_flow=True, inputs={"x": 4})
    assert done["status"] == "success", (done, a.log_tail(), b.log_tail())
    assert done["output_value"] == {"who": "b", "got": 4}
    assert done["mirrored"] is True
    remote = wait_by_origin(b, ws_b, done["id"], status=("success",))
    remote_detail = execution(b, ws_b, remote["id"])
    assert remote_detail["script"] == OWN
    assert remote_detail["trigger"]["useRemoteFlow"] is True

    missing = start_remote(a, ws_a, "to-b", "no-such-flow", wait=30, use_remote_flow=True)
    assert missing["status"] == "error", missing
    assert "no-such-flow" in (missing["message"] or "")
    assert by_origin(b, ws_b, missing["id"]) is None  # nothing started over there

    parent = a.run(ws_a, "parent", {"link": "to-b"}, timeout=30)
    assert parent["status"] == "error", parent
    assert "DependencyFailedError" in (parent["message"] or "") or "ended with status" in (
        parent["message"] or ""
    ), parent
    assert "no-such-flow" in (parent["message"] or ""), parent
    (child_id,) = execution(a, ws_a, parent["id"])["children"]
    child = execution(a, ws_a, child_id)
    assert child["status"] == "error" and "no-such-flow" in (child["message"] or "")


# --- 3. interval and immediate mode -----------------------------------------------------------


def test_interval_mode_and_fast_immediate_mode(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """A link with ``sync_interval: 1`` carries a run there and back; in immediate mode the
    round trip of a remote run takes well under 2 seconds."""
    a, b = pair
    ws_a, ws_b = f"mode-a-{uid}", f"mode-b-{uid}"
    a.create_workspace(ws_a, flows={"echo": ECHO})
    b.create_workspace(ws_b)
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    slow = linker(
        a, ws_a, b, ws_b, key_a, key_b, name_a="slow", name_b="slow", a_fields={"sync_interval": 1}
    )
    linker(a, ws_a, b, ws_b, key_a, key_b, name_a="fast", name_b="fast")
    assert slow.a.view()["sync_interval"] == 1

    done = start_remote(a, ws_a, "slow", "echo", wait=30, inputs={"x": "interval"})
    assert done["status"] == "success", (done, a.log_tail())
    assert done["output_value"] == {"got": "interval"}

    warm = start_remote(a, ws_a, "fast", "echo", wait=30, inputs={"x": 0})
    assert warm["status"] == "success", (warm, a.log_tail())
    took = []
    for x in (1, 2):
        began = time.monotonic()
        done = start_remote(a, ws_a, "fast", "echo", wait=30, inputs={"x": x})
        took.append(time.monotonic() - began)
        assert done["status"] == "success" and done["output_value"] == {"got": x}
    assert min(took) < 2.0, f"immediate mode round trips took {took}"


# --- 4. reverse connect -----------------------------------------------------------------------


def test_reverse_connect_from_behind_nat(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """Only B connects (to A), yet A controls: A's remote run in B comes back with its result."""
    a, b = pair
    ws_a, ws_b = f"nat-a-{uid}", f"nat-b-{uid}"
    a.create_workspace(ws_a, flows={"echo": ECHO})
    b.create_workspace(ws_b)
    link = linker(
        a, ws_a, b, ws_b, make_key("openssl-genrsa"), make_key("ssh-keygen-pem"), reverse=True
    )
    view_a, view_b = link.a.view(), link.b.view()
    assert (view_a["direction"], view_a["connects"]) == ("controlling", False)
    assert (view_b["direction"], view_b["connects"]) == ("controlled", True)

    done = start_remote(a, ws_a, "to-b", "echo", wait=30, inputs={"x": "nat"})
    assert done["status"] == "success", (done, a.log_tail(), b.log_tail())
    assert done["output_value"] == {"got": "nat"}
    remote = wait_by_origin(b, ws_b, done["id"], status=("success",))
    assert remote["trigger"]["syncConfig"] == "from-a"
    eventually(lambda: link.b.view()["state"].get("connected"), "B's end to be connected")


# --- 5. send_all_executions -------------------------------------------------------------------


@pytest.mark.slow
def test_send_all_executions_copies_read_only(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """With ``send_all_executions``, A's executions from before and after the link was
    enabled appear in B as read-only copies with their final status; B cannot cancel one."""
    a, b = pair
    ws_a, ws_b = f"all-a-{uid}", f"all-b-{uid}"
    a.create_workspace(ws_a, flows={"echo": ECHO, "sleeper": SLEEPER})
    b.create_workspace(ws_b)
    link = linker(
        a,
        ws_a,
        b,
        ws_b,
        make_key("openssl-genrsa"),
        make_key("openssl-genpkey"),
        a_fields={"send_all_executions": True, "enabled": False},
    )
    before = a.run(ws_a, "echo", {"x": "before"})
    assert before["status"] == "success"
    time.sleep(0.5)  # the disabled link copies nothing
    assert by_origin(b, ws_b, before["id"], "mirror") is None
    link.a.patch(enabled=True)

    copy = wait_by_origin(b, ws_b, before["id"], "mirror", status=("success",))
    assert copy["mirrored"] is True
    assert copy["output_value"] == {"got": "before"}
    assert execution(b, ws_b, copy["id"])["script"] == ECHO

    after = a.run(ws_a, "echo", {"x": "after"})
    copy_after = wait_by_origin(b, ws_b, after["id"], "mirror", status=("success",))
    assert copy_after["mirrored"] is True and copy_after["output_value"] == {"got": "after"}

    # A copy of a running execution cannot be cancelled in B: it belongs to A.
    running = a.start_execution(ws_a, "sleeper", {"seconds": 4})
    live_copy = wait_by_origin(b, ws_b, running["id"], "mirror", status=("running",))
    refused = b.client.post(f"/api/v1/workspaces/{ws_b}/executions/{live_copy['id']}/cancel")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"].get("mirrored") is True
    assert a.wait_for_execution(ws_a, running["id"])["status"] == "success"
    final = wait_by_origin(b, ws_b, running["id"], "mirror", status=("success",))
    assert any("sleeping" in line for line in log_lines(b, ws_b, final["id"]))
    # The copies of A's executions are the only executions in B.
    assert {e["trigger"]["type"] for e in executions_of(b, ws_b)} == {"mirror"}


# --- 6. cancel propagation --------------------------------------------------------------------


def test_cancelling_the_mirror_cancels_the_remote_run(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """Cancelling the local mirror of a long remote run cancels the run in B."""
    a, b = pair
    ws_a, ws_b = f"cancel-a-{uid}", f"cancel-b-{uid}"
    a.create_workspace(ws_a, flows={"sleeper": SLEEPER})
    b.create_workspace(ws_b)
    linker(a, ws_a, b, ws_b, make_key("openssl-genrsa"), make_key("ssh-keygen-pem"))

    mirror = start_remote(a, ws_a, "to-b", "sleeper", inputs={"seconds": 60})
    remote = wait_by_origin(b, ws_b, mirror["id"], status=("running",))
    eventually(lambda: execution(a, ws_a, mirror["id"])["status"] == "running", "the mirror to run")
    cancelled = ok(a.client.post(f"/api/v1/workspaces/{ws_a}/executions/{mirror['id']}/cancel"))
    assert cancelled["status"] == "cancelled", cancelled
    ended = b.wait_for_execution(ws_b, remote["id"], timeout=20)
    assert ended["status"] == "cancelled", (ended, b.log_tail())
    assert execution(a, ws_a, mirror["id"])["status"] == "cancelled"


# --- 7. rejections ----------------------------------------------------------------------------


def _start_message(ws_a: str) -> bytes:
    """A valid exchange body with one ``execution.start`` (of ECHO)."""
    message = StartMessage.new(
        origin_execution_id=uuid.uuid4().hex,
        origin_workspace=ws_a,
        flow="echo",
        script=ECHO,
        use_remote_flow=False,
        inputs={"x": "intruder"},
        correlation_id=None,
    ).wire()
    return json.dumps(envelope([message])).encode()


def _signed(url: str, key: Any, body: bytes, *, created: datetime | None = None) -> httpx.Headers:
    headers = httpx.Headers({"content-type": "application/json"})
    signing.sign_request(key, "POST", url, headers, body, created=created)
    return headers


def _answering_end_only(
    b: ServerProcess, ws_b: str, make_key: KeyMaker, linker: Linker
) -> tuple[End, rsa.RSAPrivateKey]:
    """B's end of a link whose other end is this test: returns it and A's private key."""
    key_a_path, key_b_path = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    end_b = End(b, ws_b, "from-a")
    ok(
        b.client.post(
            f"/api/v1/workspaces/{ws_b}/sync_config",
            json={
                "name": "from-a",
                "own_private_key": key_b_path.read_text(),
                "remote_public_key": public_pem_of(key_a_path),
            },
        ),
        201,
    )
    linker.made.append(end_b)
    return end_b, keys.load_private_key(key_a_path.read_text())


def test_rejected_exchanges_act_on_nothing(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """Requests to B's sync endpoint that are unsigned, signed with an unknown key, with a
    forged signature, a tampered body, replayed, stale, or for a disabled config: 401, a
    ``sync.rejected`` event naming the reason, and no execution."""
    _, b = pair
    ws_a, ws_b = f"rej-a-{uid}", f"rej-b-{uid}"
    b.create_workspace(ws_b)
    # Only B's end: nobody else talks to it, so every request below is ours.
    end_b, key_a = _answering_end_only(b, ws_b, make_key, linker)
    stranger = keys.load_private_key(make_key("ssh-keygen-openssh").read_text())
    url = end_b.endpoint

    def post(body: bytes, headers: httpx.Headers) -> httpx.Response:
        return httpx.post(url, content=body, headers=headers, timeout=30)

    def rejected(response: httpx.Response, reason: str) -> None:
        assert response.status_code == 401, (reason, response.status_code, response.text)
        assert response.json()["error"]["details"]["reason"] == reason
        newest = events(b, ws_b, types="sync.rejected", limit="1")
        assert newest and newest[0]["payload"]["reason"] == reason, (reason, newest)
        assert newest[0]["payload"]["syncConfig"] == "from-a"

    body = _start_message(ws_a)
    rejected(post(body, httpx.Headers({"content-type": "application/json"})), "unsigned")
    rejected(post(body, _signed(url, stranger, body)), "unknown_key")

    forged = _signed(url, stranger, body)  # signed by the stranger, claiming A's key id
    forged["signature-input"] = forged["signature-input"].replace(
        keys.fingerprint(stranger), keys.fingerprint(key_a)
    )
    rejected(post(body, forged), "bad_signature")

    signed = _signed(url, key_a, body)
    tampered = body.replace(b"intruder", b"tampered")
    rejected(post(tampered, signed), "digest_mismatch")

    old = datetime.now(UTC) - timedelta(minutes=6)
    rejected(post(body, _signed(url, key_a, body, created=old)), "stale")

    # The same signed request twice: the first is taken, the copy refused.
    replay_body = json.dumps(envelope([])).encode()
    replay_headers = _signed(url, key_a, replay_body)
    assert post(replay_body, replay_headers).status_code == 200
    rejected(post(replay_body, replay_headers), "replayed")

    end_b.patch(enabled=False)
    rejected(post(body, _signed(url, key_a, body)), "disabled")

    reasons = {e["payload"]["reason"] for e in events(b, ws_b, types="sync.rejected", limit="50")}
    assert reasons == {
        "unsigned",
        "unknown_key",
        "bad_signature",
        "digest_mismatch",
        "stale",
        "replayed",
        "disabled",
    }
    assert executions_of(b, ws_b) == []


def test_a_valid_signed_start_is_acted_on_once(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """The control case of the rejections: the same hand-signed start with A's key is taken
    (one execution in B), and its replay is refused without a second one."""
    _, b = pair
    ws_b = f"once-b-{uid}"
    b.create_workspace(ws_b)
    end_b, key_a = _answering_end_only(b, ws_b, make_key, linker)
    body = _start_message("once-a")
    headers = _signed(end_b.endpoint, key_a, body)
    first = httpx.post(end_b.endpoint, content=body, headers=headers, timeout=30)
    assert first.status_code == 200, first.text
    assert "ack" in [m["type"] for m in first.json()["messages"]]
    again = httpx.post(end_b.endpoint, content=body, headers=headers, timeout=30)
    assert again.status_code == 401 and again.json()["error"]["details"]["reason"] == "replayed"
    (only,) = executions_of(b, ws_b)
    assert only["trigger"]["type"] == "link"
    assert b.wait_for_execution(ws_b, only["id"])["output_value"] == {"got": "intruder"}


# --- 8. HTTPS with a private CA ---------------------------------------------------------------


@pytest.mark.slow
@SQLITE_ONLY
def test_https_with_private_ca_insecure_and_untrusted(
    server_factory: ServerFactory,
    database_url: str,
    second_database_url: str,
    two_servers_env: dict[str, str],
    tmp_path: Path,
    make_key: KeyMaker,
    linker: Linker,
) -> None:
    """B serves HTTPS with a private CA's certificate: a link trusting the CA works, one with
    ``verify_ssl: false`` works with a warning in A's log, one with neither stays
    disconnected with a certificate error in its state."""
    ca, cert, key = make_tls(tmp_path)
    a = server_factory(database_url, "a", env=two_servers_env)
    b = server_factory(
        second_database_url, "b", env=two_servers_env, tls_cert=cert, tls_key=key, ca=ca
    )
    start_all(a, b)
    ws_a, ws_b = "tls-a", "tls-b"
    a.create_workspace(ws_a, flows={"echo": ECHO})
    b.create_workspace(ws_b)
    key_a, key_b = make_key("openssl-genrsa"), make_key("ssh-keygen-pem")
    trusted = linker(
        a,
        ws_a,
        b,
        ws_b,
        key_a,
        key_b,
        name_a="ca",
        name_b="ca",
        a_fields={"ca_certificate": ca.read_text()},
    )
    assert trusted.a.view()["remote_url"].startswith("https://")
    insecure = linker(
        a, ws_a, b, ws_b, key_a, key_b, name_a="insecure", name_b="insecure",
        a_fields={"verify_ssl": False},
    )  # fmt: skip
    untrusted = linker(a, ws_a, b, ws_b, key_a, key_b, name_a="untrusted", name_b="untrusted")

    done = start_remote(a, ws_a, "ca", "echo", wait=30, inputs={"x": "ca"})
    assert done["status"] == "success", (done, a.log_tail())
    assert done["output_value"] == {"got": "ca"}

    done = start_remote(a, ws_a, "insecure", "echo", wait=30, inputs={"x": "insecure"})
    assert done["status"] == "success", (done, a.log_tail())
    assert SSL_OFF_WARNING in a.log_path.read_text(errors="replace")
    assert any("verification is off" in w for w in insecure.a.view()["warnings"])

    state = eventually(
        lambda: (s := untrusted.a.view()["state"]).get("connected") is False and s,
        "the untrusted link to report its certificate error",
    )
    assert "certificate" in str(state.get("last_error")).lower(), state
    assert trusted.a.view()["state"].get("connected") is True


# --- 10. the role of executions started through a link -------------------------------------


def test_link_role_limits_remote_runs(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """With ``role: viewer`` on B's end a remote run cannot save a setting in B (it ends in
    error, permission denied); with the default role (editor) it can."""
    a, b = pair
    ws_a, ws_b = f"role-a-{uid}", f"role-b-{uid}"
    a.create_workspace(ws_a, flows={"save": SAVE_SETTING})
    b.create_workspace(ws_b)
    link = linker(
        a,
        ws_a,
        b,
        ws_b,
        make_key("openssl-genrsa"),
        make_key("openssl-genpkey"),
        b_fields={"role": "viewer"},
    )
    assert link.b.view()["role"] == "viewer"

    denied = start_remote(a, ws_a, "to-b", "save", wait=30, inputs={"value": 1})
    assert denied["status"] == "error", (denied, b.log_tail())
    assert "permission denied" in (denied["message"] or "").lower(), denied
    remote = wait_by_origin(b, ws_b, denied["id"], status=("error",))
    assert "permission denied" in (remote["message"] or "").lower()
    assert b.client.get(f"/api/v1/workspaces/{ws_b}/settings/x").status_code == 404

    assert link.b.patch(role=None)["role"] == "editor"
    allowed = start_remote(a, ws_a, "to-b", "save", wait=30, inputs={"value": 2})
    assert allowed["status"] == "success", (allowed, b.log_tail())
    assert ok(b.client.get(f"/api/v1/workspaces/{ws_b}/settings/x"))["value"] == 2


# --- 9. link state (last: it stops and restarts the shared B) -------------------------------


@pytest.mark.slow
def test_link_state_follows_the_other_server(
    pair: tuple[ServerProcess, ServerProcess], make_key: KeyMaker, linker: Linker, uid: str
) -> None:
    """The connecting end's state says connected (with the last exchange time) and records
    ``sync.connected``; with B stopped it turns disconnected (``sync.disconnected``), and
    connected again once B is back."""
    a, b = pair
    ws_a, ws_b = f"state-a-{uid}", f"state-b-{uid}"
    a.create_workspace(ws_a, flows={"echo": ECHO})
    b.create_workspace(ws_b)
    link = linker(a, ws_a, b, ws_b, make_key("openssl-genrsa"), make_key("ssh-keygen-pem"))

    state = eventually(
        lambda: (s := link.a.view()["state"]).get("connected") is True and s, "connected"
    )
    assert state.get("last_exchange_at") and state.get("last_error") is None
    connected = eventually(lambda: events(a, ws_a, types="sync.connected"), "sync.connected")
    assert connected[0]["payload"]["syncConfig"] == "to-b"

    b.stop()
    try:
        down = eventually(
            lambda: events(a, ws_a, types="sync.disconnected"), "sync.disconnected", 30
        )
        assert down[0]["payload"]["syncConfig"] == "to-b" and down[0]["payload"]["error"]
        state = eventually(
            lambda: (s := link.a.view()["state"]).get("connected") is False and s,
            "connected false",
        )
        assert state.get("last_error")
    finally:
        b.start()
    eventually(
        lambda: link.a.view()["state"].get("connected") is True, "connected again", timeout=30
    )
    again = events(a, ws_a, types="sync.connected")
    assert len(again) >= 2 and again[0]["seq"] > down[0]["seq"], (again, down)
    done = start_remote(a, ws_a, "to-b", "echo", wait=30, inputs={"x": "back"})
    assert done["status"] == "success" and done["output_value"] == {"got": "back"}
