"""A workspace with one flow, ``hello``, on the test's store, and its queued executions."""

from __future__ import annotations

import pytest

from flowlink.executions import service as executions
from flowlink.store.engine import Store
from flowlink.store.models import Workspace
from flowlink.workspaces import service as workspaces

SCRIPT = "def handler(system, this, inputs):\n    return this.success('ok')\n"


@pytest.fixture
def workspace(store: Store) -> Workspace:
    """Workspace ``executions-test`` with the flow ``hello`` (``SCRIPT``)."""
    with store.write() as session:
        ws = workspaces.create_workspace(session, "executions-test")
        workspaces.put_flow(session, ws, "hello", SCRIPT)
        return ws


def new_executions(store: Store, workspace: Workspace, n: int = 1) -> list[str]:
    """The ids of ``n`` new executions of ``hello``, queued in one transaction."""
    with store.write() as session:
        ws = session.get(Workspace, workspace.id)
        assert ws is not None
        return [executions.create_execution(session, ws, flow_name="hello").id for _ in range(n)]
