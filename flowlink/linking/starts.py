"""Starting an execution here or, with ``remote``, in a linked workspace."""

from __future__ import annotations

from typing import Unpack

from sqlalchemy.orm import Session

from flowlink.errors import Invalid
from flowlink.executions.starts import StartedBy, StartRequest, start_local
from flowlink.linking import exchange
from flowlink.store.models import Execution, Workspace


def start_execution(
    session: Session,
    workspace: Workspace,
    request: StartRequest,
    *,
    default_max_runtime: float,
    **by: Unpack[StartedBy],
) -> Execution:
    """Queue the execution here, or start it in the linked workspace of ``request.remote``
    (the local execution returned then mirrors it)."""
    if request.remote is not None:
        if request.script is not None or not request.flow:
            raise Invalid(
                "remote: give the flow to run in the linked workspace (not a script)",
                details={"field": "remote"},
            )
        return exchange.start_remote_execution(
            session,
            workspace,
            request.remote,
            exchange.RemoteStart(
                flow=request.flow,
                inputs=request.inputs,
                use_remote_flow=request.use_remote_flow,
                max_runtime=request.max_runtime,
            ),
            default_max_runtime=default_max_runtime,
            **by,
        )
    return start_local(session, workspace, request, default_max_runtime=default_max_runtime, **by)
