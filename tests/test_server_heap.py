"""A server process of its own settles its heap once started (``flowlink.server.settle_heap``).

Each case runs in a child process: freezing the heap is for a whole process, and the test
process must keep its own collector as it is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flowlink.server import YOUNG_COLLECTION_THRESHOLD
from tests.conftest import free_port, fresh_store_url

SERVE = """
import gc, json, signal, sys, threading, time
import httpx
from flowlink.server import build_server, serve
from flowlink.settings import ServerSettings

url, port, settle = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
settings = ServerSettings(database_url=url, secret_key="test-secret-key", warm_runners=0)
running = build_server(settings, port=port, with_worker=False, settle_heap=settle)
before = gc.get_freeze_count()
thread = threading.Thread(target=serve, args=(running,), daemon=True)
thread.start()
deadline = time.monotonic() + 30
while True:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/api/v1/health").status_code == 200:
            break
    except httpx.TransportError:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
print(json.dumps({"before": before, "frozen": gc.get_freeze_count(),
                  "young": gc.get_threshold()[0]}))
running.server.handle_exit(signal.SIGTERM, None)
thread.join(30)
"""


@pytest.mark.parametrize("settle", [True, False])
def test_a_started_server_freezes_its_heap_only_when_the_process_is_its_own(
    tmp_path: Path, settle: bool
) -> None:
    with fresh_store_url("sqlite", tmp_path, "flowlink_t") as url:
        out = subprocess.run(
            [sys.executable, "-c", SERVE, url, str(free_port()), "1" if settle else "0"],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
    state = json.loads(out.stdout.strip().splitlines()[-1])
    assert state["before"] == 0
    if settle:
        assert state["frozen"] > 10_000  # the modules, the app and the store, at least
        assert state["young"] == YOUNG_COLLECTION_THRESHOLD
    else:
        assert state["frozen"] == 0
        assert state["young"] == 700
