"""Worker-side exceptions of the runtime layer.

``handle_call`` implementations (the worker's side of ``flow_api``) raise the
:class:`FlowApiError` subclasses below; :func:`flowlink.runtime.session.drive`
serializes them to the runner, where the script sees the ``flow_api`` exception
of the same wire name (``ResourceNotFoundError`` ...).
"""

from __future__ import annotations

__all__ = [
    "WIRE_TYPES",
    "DependencyFailed",
    "FlowApiError",
    "PermissionDenied",
    "ResourceNotFound",
    "RunnerError",
]


class FlowApiError(Exception):
    """A ``flow_api`` call failed; the script receives ``flow_api.FlowApiError``."""

    wire_type: str = "FlowApiError"


class ResourceNotFound(FlowApiError):
    """The requested setting, flow, execution ... does not exist."""

    wire_type = "ResourceNotFoundError"


class PermissionDenied(FlowApiError):
    """The execution is not allowed to do this."""

    wire_type = "PermissionDeniedError"


class DependencyFailed(FlowApiError):
    """A child execution the script depends on failed or was cancelled."""

    wire_type = "DependencyFailedError"


#: Every error type name that may appear in a ``reply`` message's ``error.type``.
WIRE_TYPES: frozenset[str] = frozenset(
    cls.wire_type for cls in (FlowApiError, ResourceNotFound, PermissionDenied, DependencyFailed)
)


class RunnerError(RuntimeError):
    """The runtime could not provide a runner (zygote dead, runner failed to start...)."""
