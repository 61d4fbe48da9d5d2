"""Worker-side exceptions of the runtime layer.

The errors a ``handle_call`` implementation (the worker's side of ``flow_api``) raises are
the ``flow_api`` exceptions themselves (:class:`flowlink.runtime.flow_api.FlowApiError` and
its subclasses): :func:`flowlink.runtime.session.drive` sends their name to the runner,
where the script receives the same class.
"""

from __future__ import annotations

__all__ = ["RunnerError"]


class RunnerError(RuntimeError):
    """The runtime could not provide a runner (zygote dead, runner failed to start...)."""
