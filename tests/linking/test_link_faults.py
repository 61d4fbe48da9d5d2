"""Fault tests of workspace links between two real servers, each its own OS process.

Workspace ``ws-a`` on server A controls ``ws-b`` on server B through the sync configs
``to-b`` (A's end, which connects) and ``from-a`` (B's end, which answers). Each test breaks
something on the way — B killed mid-run, the link cut for a minute, A restarted with
messages in its outbox — and then proves that every remote execution ran exactly once:
each mirror in A ended, B has exactly one run per mirror (distinct ``originExecutionId``),
and both sides agree on how each one ended.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from tests.linking.conftest import KeyMaker, add_link_end
from tests.linking.servers import ENDED, ProxyFactory, ServerProcess, execution_counts

WS_A, WS_B = "ws-a", "ws-b"
TO_B, FROM_A = "to-b", "from-a"
SLEEPY = (
    "import time\n"
    "def handler(system, this, inputs):\n"
    "    time.sleep(inputs.get('sleep', 0))\n"
    "    return this.success('slept')\n"
)
FAST = "def handler(system, this, inputs):\n    return this.success('done')\n"
LINK_ENV = {
    "FLOWLINK_LINK_BACKOFF_MAX": "1",
    "FLOWLINK_LINK_REFRESH": "0.3",
    "FLOWLINK_LINK_TIMEOUT": "5",
}


@pytest.fixture
def two_servers_env() -> dict[str, str]:
    """Short backoff, refresh and timeout so that links recover within a second or so."""
    return dict(LINK_ENV)


# --- helpers ------------------------------------------------------------------------------------


def sync_url(base: str) -> str:
    """The URL of B's end of the link, ``base`` being B's (or a proxy's) base URL."""
    return f"{base}/api/v1/workspaces/{WS_B}/sync_config/{FROM_A}/sync"


def link(a: ServerProcess, b: ServerProcess, b_base: str, make_key: KeyMaker) -> None:
    """Make both workspaces (the flows live in A) and link A (controlling) to B."""
    a.create_workspace(WS_A, flows={"sleepy": SLEEPY, "fast": FAST})
    b.create_workspace(WS_B)
    key_a, key_b = make_key("openssl-genrsa"), make_key("openssl-genpkey")
    add_link_end(b.client, WS_B, FROM_A, key_b, key_a)
    add_link_end(a.client, WS_A, TO_B, key_a, key_b, remote_url=sync_url(b_base))


def config_view(a: ServerProcess) -> dict[str, Any]:
    """A's end of the link as the API shows it."""
    response = a.client.get(f"/api/v1/workspaces/{WS_A}/sync_config/{TO_B}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def outbox_depth(a: ServerProcess) -> int:
    """Messages waiting in A's outbox for B."""
    return int(config_view(a)["outbox_depth"])


def counts(server: ServerProcess) -> dict[str, int]:
    """Executions of the server's store by status (read from its store)."""
    return execution_counts(server.database_url)


def ended(server: ServerProcess) -> int:
    """How many executions of the server's store have ended."""
    now = counts(server)
    return sum(now.get(status, 0) for status in ENDED)


def all_executions(server: ServerProcess, ws: str) -> list[dict[str, Any]]:
    """Every execution of a workspace, through the API's cursor paging."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        response = server.client.get(f"/api/v1/workspaces/{ws}/executions", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items += page["items"]
        if not page["next_cursor"]:
            return items
        params["before"] = page["next_cursor"]


def start_remote(a: ServerProcess, flow: str, inputs: list[dict[str, Any]]) -> list[str]:
    """Start one remote execution in B per inputs (batches of 500); the mirror ids in A."""
    ids: list[str] = []
    for first in range(0, len(inputs), 500):
        batch = [
            {"flow": flow, "remote": TO_B, "inputs": item} for item in inputs[first : first + 500]
        ]
        response = a.client.post(
            f"/api/v1/workspaces/{WS_A}/executions/batch", json={"executions": batch}
        )
        assert response.status_code == 201, response.text
        ids += [item["id"] for item in response.json()["items"]]
    assert all(item["mirrored"] for item in all_executions(a, WS_A) if item["id"] in set(ids)), (
        "a remote execution's local execution should be a mirror"
    )
    return ids


def diagnostics(a: ServerProcess, b: ServerProcess) -> str:
    """Counts on both sides, the link's state and both servers' log tails."""
    parts = []
    for server in (a, b):
        try:
            parts.append(f"{server.name} executions: {counts(server)}")
        except Exception as error:  # a server that is down still gets its log shown
            parts.append(f"{server.name}: no metrics ({error!r})")
    try:
        view = config_view(a)
        parts.append(f"A outbox_depth={view['outbox_depth']} state={view['state']}")
    except Exception as error:
        parts.append(f"A link: no view ({error!r})")
    for server in (a, b):
        parts.append(f"--- {server.name} log tail ---\n{server.log_tail(40)}")
    return "\n".join(parts)


def wait_until(
    what: str,
    check: Callable[[], bool],
    timeout: float,
    a: ServerProcess,
    b: ServerProcess,
    interval: float = 0.1,
) -> float:
    """Poll ``check`` until it holds; returns the seconds it took, fails with diagnostics."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout}s\n{diagnostics(a, b)}")
        time.sleep(interval)
    return time.monotonic() - start


def wait_connected(a: ServerProcess, b: ServerProcess, timeout: float = 20.0) -> None:
    """Wait until A's end of the link has exchanged with B."""
    wait_until(
        "the link connects",
        lambda: (config_view(a)["state"] or {}).get("connected") is True,
        timeout,
        a,
        b,
    )


def assert_exactly_once(
    a: ServerProcess, b: ServerProcess, mirror_ids: list[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Every mirror ended in A, B ran each exactly once, and both agree on the outcome.

    Neither server's log may hold a traceback (an exchange that failed unexpectedly).

    Returns A's mirrors and B's runs, both by the mirror's id.
    """
    expected = set(mirror_ids)
    assert len(expected) == len(mirror_ids), "the mirror ids should be distinct"
    in_a = [e for e in all_executions(a, WS_A) if e["id"] in expected]
    mirrors = {e["id"]: e for e in in_a}
    in_b = all_executions(b, WS_B)
    origins = Counter(str((e["trigger"] or {}).get("originExecutionId")) for e in in_b)
    twice = {origin: n for origin, n in origins.items() if n > 1}
    runs = {str(e["trigger"]["originExecutionId"]): e for e in in_b}
    problems = []
    if len(in_a) != len(expected):
        problems.append(f"A has {len(in_a)} of the {len(expected)} mirrors")
    if not all(e["mirrored"] for e in in_a):
        problems.append("some executions in A are not mirrors")
    if unended := [e["id"] for e in in_a if e["status"] not in ENDED]:
        problems.append(f"{len(unended)} mirrors in A have not ended: {unended[:5]}")
    if len(in_b) != len(expected):
        problems.append(f"B has {len(in_b)} executions, expected {len(expected)}")
    if twice:
        problems.append(f"{len(twice)} origins ran more than once in B: {list(twice)[:5]}")
    if missing := expected - set(runs):
        problems.append(f"{len(missing)} mirrors never ran in B: {sorted(missing)[:5]}")
    if strangers := set(runs) - expected:
        problems.append(f"{len(strangers)} runs in B for unknown origins: {sorted(strangers)[:5]}")
    if not_link := [e["id"] for e in in_b if e["trigger"].get("type") != "link"]:
        problems.append(f"{len(not_link)} runs in B not started by the link")
    if unended_b := [e["id"] for e in in_b if e["status"] not in ENDED]:
        problems.append(f"{len(unended_b)} runs in B have not ended: {unended_b[:5]}")
    disagree = [
        (mirror_id, mirror["status"], runs[mirror_id]["status"])
        for mirror_id, mirror in mirrors.items()
        if mirror_id in runs
        and (mirror["status"], mirror["message"])
        != (runs[mirror_id]["status"], runs[mirror_id]["message"])
    ]
    if disagree:
        problems.append(f"{len(disagree)} mirrors disagree with their run: {disagree[:5]}")
    for server in (a, b):
        text = server.log_path.read_text(errors="replace")
        if "Traceback" in text:
            at = text.index("Traceback")
            problems.append(f"{server.name}'s log has a traceback:\n{text[at - 300 : at + 3000]}")
    assert not problems, "\n".join(problems) + "\n" + diagnostics(a, b)
    return mirrors, runs


def sync_events(a: ServerProcess, kind: str) -> list[dict[str, Any]]:
    """A's events of one type (newest first) about the link ``to-b``."""
    response = a.client.get(
        f"/api/v1/workspaces/{WS_A}/events", params={"types": kind, "limit": 100}
    )
    assert response.status_code == 200, response.text
    return [e for e in response.json()["items"] if e["payload"].get("syncConfig") == TO_B]


def assert_all_succeed_once(
    a: ServerProcess, b: ServerProcess, mirror_ids: list[str], timeout: float
) -> None:
    """Every mirror succeeds in A within ``timeout``, each ran exactly once in B
    (``assert_exactly_once``), and A's outbox drains."""
    total = len(mirror_ids)
    wait_until(
        f"all {total} mirrors succeed in A",
        lambda: counts(a).get("success", 0) >= total,
        timeout,
        a,
        b,
        0.2,
    )
    mirrors, _runs = assert_exactly_once(a, b, mirror_ids)
    assert {m["status"] for m in mirrors.values()} == {"success"}
    wait_until("A's outbox drains", lambda: outbox_depth(a) == 0, 30, a, b)


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_controlled_server_killed_mid_run(
    two_servers: tuple[ServerProcess, ServerProcess], make_key: KeyMaker
) -> None:
    """B is SIGKILLed with runs in flight and restarted: each of 200 runs ends exactly once.

    The runs that were running at the kill end as errors ("worker lost") when B's reaper
    finds their lease expired; the queued ones run after the restart. A redelivers what B
    may or may not have applied, and B must not run anything twice.
    """
    a, b = two_servers
    link(a, b, b.url, make_key)
    wait_connected(a, b)
    total = 200
    ids = start_remote(a, "sleepy", [{"sleep": 0.2 + 0.1 * (i % 4)} for i in range(total)])
    wait_until("a third of the runs end in A", lambda: ended(a) >= total // 3, 60, a, b, 0.02)
    at_kill = ended(a)
    b.kill()
    assert at_kill < total, f"every run ended before the kill ({at_kill}); nothing in flight"
    time.sleep(3)
    b.restart()
    wait_until(f"all {total} mirrors end in A", lambda: ended(a) >= total, 120, a, b, 0.2)
    mirrors, _runs = assert_exactly_once(a, b, ids)
    statuses = Counter(m["status"] for m in mirrors.values())
    lost = [m for m in mirrors.values() if m["status"] == "error"]
    assert set(statuses) <= {"success", "error"}, (statuses, diagnostics(a, b))
    assert all("worker lost" in (m["message"] or "") for m in lost), [
        m["message"] for m in lost if "worker lost" not in (m["message"] or "")
    ]
    assert lost, f"no run was lost at the kill ({statuses}, {at_kill} ended before it)"


@pytest.mark.slow
def test_link_cut_for_a_minute(
    two_servers: tuple[ServerProcess, ServerProcess],
    make_key: KeyMaker,
    tcp_proxy: ProxyFactory,
) -> None:
    """With the link cut for 60 s, 500 starts wait in A's outbox; after the heal all run once.

    The cut lasts the required 60 s on both backends. While it lasts, A's outbox keeps the
    starts and B sees nothing; afterwards every one of the 500 succeeds in A, B ran each
    exactly once, and A recorded ``sync.disconnected`` and then ``sync.connected``.
    """
    a, b = two_servers
    proxy = tcp_proxy("127.0.0.1", b.port)
    link(a, b, proxy.url(), make_key)
    wait_connected(a, b)
    proxy.cut()
    wait_until(
        "A notices the cut",
        lambda: (config_view(a)["state"] or {}).get("connected") is False,
        30,
        a,
        b,
    )
    total = 500
    ids = start_remote(a, "fast", [{"n": i} for i in range(total)])
    cut_at = time.monotonic()
    while time.monotonic() - cut_at < 60:
        depth = outbox_depth(a)
        assert depth > 0, f"A's outbox emptied during the cut\n{diagnostics(a, b)}"
        assert sum(counts(b).values()) == 0, f"B got runs during the cut\n{diagnostics(a, b)}"
        time.sleep(5)
    assert outbox_depth(a) == total, diagnostics(a, b)
    proxy.heal()
    assert_all_succeed_once(a, b, ids, 180)
    disconnected, connected = sync_events(a, "sync.disconnected"), sync_events(a, "sync.connected")
    assert disconnected, f"no sync.disconnected event in A\n{diagnostics(a, b)}"
    assert connected, f"no sync.connected event in A\n{diagnostics(a, b)}"
    assert connected[0]["seq"] > disconnected[0]["seq"], (connected[0], disconnected[0])
    assert disconnected[0]["payload"]["remoteUrl"] == sync_url(proxy.url())


@pytest.mark.slow
@pytest.mark.parametrize("how", ["stop", "kill"])
def test_controlling_server_restarts_with_a_full_outbox(
    two_servers: tuple[ServerProcess, ServerProcess],
    make_key: KeyMaker,
    tcp_proxy: ProxyFactory,
    how: str,
) -> None:
    """A is stopped (SIGTERM) or killed with 50 starts in its outbox: after its restart and
    the heal of the link, all 50 are delivered and run exactly once in B."""
    a, b = two_servers
    proxy = tcp_proxy("127.0.0.1", b.port)
    link(a, b, proxy.url(), make_key)
    wait_connected(a, b)
    proxy.cut()
    total = 50
    ids = start_remote(a, "fast", [{"n": i} for i in range(total)])
    time.sleep(1.0)  # the sender tries (and fails) to deliver
    assert outbox_depth(a) == total, diagnostics(a, b)
    a.restart(kill=how == "kill")
    assert outbox_depth(a) == total, f"A's outbox changed in the restart\n{diagnostics(a, b)}"
    assert sum(counts(b).values()) == 0, diagnostics(a, b)
    proxy.heal()
    assert_all_succeed_once(a, b, ids, 60)
