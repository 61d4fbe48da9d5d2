"""The API available to flow scripts as ``import flow_api``.

A flow script defines a handler::

    import flow_api

    def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
        this.log("got", inputs)
        return this.success("all done", answer=42)

The older form ``def handler(system, this)`` works as well (read the inputs
with ``this.get("input_value")``). See ``docs/flow_api.md`` for the reference.

Every call that needs the server (settings, child flows, saving outputs ...)
is relayed over the runner's channel to the worker; the functions block until
the worker answered.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from flowlink.execution_status import ExecutionStatus

__all__ = [
    "DependencyFailedError",
    "Execution",
    "File",
    "Flow",
    "FlowApiError",
    "PermissionDeniedError",
    "ResourceNotFoundError",
    "Setting",
    "System",
    "User",
]


# --------------------------------------------------------------------------- errors


class FlowApiError(Exception):
    """Base class of every error raised by ``flow_api`` calls."""


class ResourceNotFoundError(FlowApiError):
    """The setting, flow, execution ... you asked for does not exist."""


class PermissionDeniedError(FlowApiError):
    """This execution is not allowed to do that."""


class DependencyFailedError(FlowApiError):
    """A child execution you waited for ended with status ``error`` or ``cancelled``."""


# Tracebacks name the module scripts import (flow_api.DependencyFailedError), not ours.
for _public in (FlowApiError, ResourceNotFoundError, PermissionDeniedError, DependencyFailedError):
    _public.__module__ = "flow_api"

#: Every error type name a ``reply`` message's ``error.type`` may carry, and its class.
ERROR_TYPES: dict[str, type[FlowApiError]] = {
    "FlowApiError": FlowApiError,
    "ResourceNotFoundError": ResourceNotFoundError,
    "PermissionDeniedError": PermissionDeniedError,
    "DependencyFailedError": DependencyFailedError,
}


class _ExecutionEnded(BaseException):
    """Raised by ``this.success()`` / ``this.error()`` to stop the handler.

    Derives from BaseException so that ``except Exception`` in a script does not
    swallow it.
    """


# --------------------------------------------------------------------------- runtime binding


class _Channel(Protocol):
    def call(self, method: str, params: dict[str, Any]) -> Any: ...

    def log(self, lines: list[str]) -> None: ...


class _Final:
    __slots__ = ("message", "status")

    def __init__(self, status: ExecutionStatus, message: str | None) -> None:
        self.status = status
        self.message = message


class _Runtime:
    """State of the one execution running in this process (set by the runner)."""

    def __init__(
        self,
        channel: _Channel,
        execution: dict[str, Any],
        inputs: dict[str, Any],
        config: dict[str, Any],
        flush_output: Callable[[], None] = lambda: None,
        log: Callable[[list[str]], None] | None = None,
    ) -> None:
        self.channel = channel
        self.log = channel.log if log is None else log
        self.execution = execution
        self.inputs = inputs
        self.config = config
        self.flush_output = flush_output
        self.outputs: dict[str, Any] = {}
        self.final: _Final | None = None
        self.lock = threading.Lock()
        self.disabled_reason: str | None = None
        self.owner_pid = os.getpid()

    def call(self, method: str, params: dict[str, Any]) -> Any:
        """Relay a call to the worker (pending log output is sent first)."""
        self.check()
        self.flush_output()
        return self.channel.call(method, params)

    def check(self) -> None:
        """Raise FlowApiError if flow_api may not be used from this process."""
        if self.disabled_reason is not None:
            raise FlowApiError(self.disabled_reason)
        if os.getpid() != self.owner_pid:
            raise FlowApiError("flow_api cannot be used from a forked child process")


_runtime: _Runtime | None = None


def _rt() -> _Runtime:
    if _runtime is None:
        raise FlowApiError("flow_api is only usable inside a flow script run by flowlink")
    return _runtime


def _install(runtime: _Runtime | None) -> None:
    """Bind the module to the running execution (used by the runner)."""
    global _runtime
    _runtime = runtime


def _raise_remote_error(error: Any) -> NoReturn:
    if not isinstance(error, dict):
        raise FlowApiError(str(error))
    cls = ERROR_TYPES.get(str(error.get("type")), FlowApiError)
    raise cls(str(error.get("message") or cls.__name__))


def _check_json(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{what} must be JSON serializable: {exc}") from None


def _format_values(values: tuple[Any, ...]) -> list[str]:
    return " ".join(str(v) for v in values).split("\n")


# Fields of the current execution that are answered locally (they never change).
_LOCAL_FIELDS = ("id", "name", "workspace", "parent_id")


# --------------------------------------------------------------------------- Execution


class Execution:
    """An execution: ``this`` (the running one) or a handle to a child execution.

    Only ``this`` can end itself, log, save outputs or start children; child
    handles (returned by :meth:`flow`) support :meth:`get`, :meth:`wait`,
    :attr:`status` and :attr:`id`.
    """

    __slots__ = ("_flow_name", "_id", "_is_self", "_record")

    def __init__(
        self, execution_id: Any, *, is_self: bool = False, flow_name: str | None = None
    ) -> None:
        self._id = execution_id
        self._is_self = is_self
        self._flow_name = flow_name
        self._record: dict[str, Any] | None = None

    def __repr__(self) -> str:
        kind = "this" if self._is_self else "child"
        return f"<flow_api.Execution {kind} id={self._id!r} flow={self._flow_name!r}>"

    # ----------------------------------------------------------- identity / fields

    @property
    def id(self) -> Any:
        """The execution id."""
        return self._id

    @property
    def status(self) -> str:
        """Current status (``running``, ``success``, ``error``, ``cancelled`` ...).

        Asks the server every time.
        """
        return str(self.get("status"))

    def get(self, field: str) -> Any:
        """Return a field of the execution record.

        Fields: ``input_value`` (dict), ``output_value`` (dict), ``status``,
        ``message``, ``name``, ``id``, ``parent_id``, ``workspace`` and whatever
        else the server stores. ``this.get("input_value")`` is answered locally.
        """
        rt = _rt()
        if self._is_self:
            if field == "input_value":
                value = rt.execution.get("input_value")
                return rt.inputs if value is None else value
            if field in _LOCAL_FIELDS and field in rt.execution:
                return rt.execution[field]
            return rt.call("execution.get", {"id": None, "field": field})
        if field == "id":
            return self._id
        return rt.call("execution.get", {"id": self._id, "field": field})

    # ----------------------------------------------------------- ending

    def _require_self(self, what: str) -> _Runtime:
        rt = _rt()
        if not self._is_self:
            raise FlowApiError(f"{what} is only possible on the current execution (this)")
        rt.check()
        return rt

    def success(self, message: str | None = None, **outputs: Any) -> NoReturn:
        """End the execution successfully, right now.

        ``outputs`` are merged into the execution's output value. Never returns
        (``return this.success(...)`` reads well but is not needed).
        """
        rt = self._require_self("success()")
        _check_json(outputs, "outputs")
        with rt.lock:
            if rt.final is None:
                rt.outputs.update(outputs)
                rt.final = _Final(
                    ExecutionStatus.SUCCESS, None if message is None else str(message)
                )
        raise _ExecutionEnded()

    def error(self, message: str) -> NoReturn:
        """End the execution with status ``error`` and ``message``, right now."""
        rt = self._require_self("error()")
        with rt.lock:
            if rt.final is None:
                rt.final = _Final(ExecutionStatus.ERROR, str(message))
        raise _ExecutionEnded()

    # ----------------------------------------------------------- logging / outputs

    def log(self, *values: Any) -> None:
        """Write a line to the execution log (values joined by spaces like ``print``)."""
        rt = self._require_self("log()")
        rt.log(_format_values(values))

    def save(self, output_value: dict[str, Any] | None = None, message: str | None = None) -> None:
        """Persist progress now: merge ``output_value`` into the outputs and/or set the message."""
        rt = self._require_self("save()")
        if output_value is not None:
            if not isinstance(output_value, dict):
                raise TypeError("output_value must be a dict")
            _check_json(output_value, "output_value")
        rt.call(
            "execution.save",
            {
                "id": None,
                "outputs": output_value,
                "message": None if message is None else str(message),
            },
        )
        if output_value:
            with rt.lock:
                rt.outputs.update(output_value)

    def set_output(self, **outputs: Any) -> None:
        """Set (merge) output values and persist them immediately."""
        self.save(output_value=outputs)

    # ----------------------------------------------------------- children / events

    def flow(
        self,
        name: str,
        inputs: dict[str, Any] | None = None,
        *,
        remote: str | None = None,
        remote_workspace_name: str | None = None,
        use_remote_flow: bool = False,
        run: bool = True,
        wait: bool = True,
    ) -> Execution:
        """Start the flow ``name`` as a child execution and return its handle.

        :param inputs: the child's ``input_value``.
        :param remote: name of a linked (remote) workspace to run it in;
            ``remote_workspace_name`` is an alias.
        :param use_remote_flow: run the remote workspace's flow of that name instead
            of shipping this workspace's script.
        :param run: False creates the child without starting it.
        :param wait: block until the child ended (ignored when ``run`` is False);
            raises :class:`DependencyFailedError` if it ended in error or was cancelled.
        """
        rt = self._require_self("flow()")
        if (
            remote is not None
            and remote_workspace_name is not None
            and remote != remote_workspace_name
        ):
            raise ValueError("remote and remote_workspace_name disagree")
        target = remote if remote is not None else remote_workspace_name
        child_inputs = {} if inputs is None else inputs
        if not isinstance(child_inputs, dict):
            raise TypeError("inputs must be a dict")
        _check_json(child_inputs, "inputs")
        reply = rt.call(
            "execution.start_child",
            {
                "flow": str(name),
                "inputs": child_inputs,
                "remote": target,
                "use_remote_flow": bool(use_remote_flow),
                "run": bool(run),
                "wait": bool(wait and run),
            },
        )
        child_id = reply.get("id") if isinstance(reply, dict) else reply
        child = Execution(child_id, flow_name=str(name))
        if wait and run:
            record = reply.get("record") if isinstance(reply, dict) else None
            if isinstance(record, dict):  # the worker waited already: one call, not two
                child._settle(record)
            else:
                child.wait()
        return child

    def wait(self) -> Execution:
        """Block until this child execution ended; returns itself.

        Raises :class:`DependencyFailedError` if it ended with ``error`` or ``cancelled``.
        """
        rt = _rt()
        if self._is_self:
            raise FlowApiError("an execution cannot wait for itself")
        record = rt.call("execution.wait", {"id": self._id})
        if isinstance(record, dict):
            self._settle(record)
        return self

    def _settle(self, record: dict[str, Any]) -> None:
        """Keep the ended child's record; raise if it failed."""
        self._record = record
        status = record.get("status")
        if status in ("error", "cancelled"):
            name = record.get("name") or self._flow_name
            message = record.get("message")
            raise DependencyFailedError(
                f"child execution {self._id} of flow {name!r} ended with status {status!r}"
                + (f": {message}" if message else "")
            )

    def emit(self, event_type: str, payload: dict[str, Any] | None = None) -> None:
        """Emit an event of ``event_type`` (may trigger other flows)."""
        rt = self._require_self("emit()")
        _check_json(payload, "payload")
        rt.call("execution.emit", {"type": str(event_type), "payload": payload})

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` (counts towards the maximum runtime)."""
        rt = self._require_self("sleep()")
        if seconds < 0:
            raise ValueError("seconds must be >= 0")
        rt.flush_output()
        time.sleep(seconds)


# --------------------------------------------------------------------------- System


class Setting:
    """Handle to a workspace setting (``system.setting(name)``)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<flow_api.Setting {self._name!r}>"

    @property
    def name(self) -> str:
        """The setting's name."""
        return self._name

    def get(self, field: str = "value") -> Any:
        """Return the setting's ``value`` (or ``name``).

        Raises :class:`ResourceNotFoundError` if the setting does not exist.
        """
        if field == "name":
            return self._name
        if field != "value":
            raise ValueError(f"unknown setting field {field!r} (use 'value')")
        return _rt().call("setting.get", {"name": self._name})

    def save(self, value: Any, secret: bool | None = None) -> Setting:
        """Create or overwrite the setting with ``value`` (JSON serializable).

        ``secret=True`` makes it a secret setting (needs 'manage settings'); ``None`` keeps
        its kind. Values of secrets this execution reads or writes are redacted in its logs.
        """
        _check_json(value, "value")
        params: dict[str, Any] = {"name": self._name, "value": value}
        if secret is not None:
            params["secret"] = bool(secret)
        _rt().call("setting.save", params)
        return self

    def exists(self) -> bool:
        """True if the setting exists."""
        return bool(_rt().call("setting.exists", {"name": self._name}))

    def delete(self) -> None:
        """Delete the setting (ResourceNotFoundError if missing)."""
        _rt().call("setting.delete", {"name": self._name})


class Flow:
    """Handle to a flow of the workspace (``system.flow(name)``)."""

    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return f"<flow_api.Flow {self._name!r}>"

    @property
    def name(self) -> str:
        """The flow's name."""
        return self._name

    def get(self, field: str) -> Any:
        """Return a field of the flow (``script``, ``name`` ...).

        Raises :class:`ResourceNotFoundError` if the flow does not exist.
        """
        return _rt().call("flow.get", {"name": self._name, "field": field})


class User:
    """The user the execution runs as (``system.get_own_user()``)."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def __repr__(self) -> str:
        return f"<flow_api.User {self._data.get('name')!r}>"

    def get(self, field: str, default: Any = None) -> Any:
        """Return a field of the user record (``name``, ``id`` ...), or ``default``."""
        return self._data.get(field, default)


class File:
    """Handle to a workspace file (``system.file(path)``); contents are bytes."""

    __slots__ = ("_path",)

    def __init__(self, path: str) -> None:
        self._path = path

    def __repr__(self) -> str:
        return f"<flow_api.File {self._path!r}>"

    @property
    def path(self) -> str:
        """The file's path in the workspace (``reports/q1.csv``)."""
        return self._path

    def get(self, field: str = "content") -> Any:
        """The file's ``content`` (bytes), or ``size``, ``sha256``, ``content_type``, ``path``.

        Raises :class:`ResourceNotFoundError` if the file does not exist.
        """
        if field == "path":
            return self._path
        data = _rt().call("file.get", {"path": self._path, "field": field})
        return base64.b64decode(data) if field == "content" else data

    def read_text(self, encoding: str = "utf-8") -> str:
        """The file's content decoded as text."""
        content: bytes = self.get("content")
        return content.decode(encoding)

    def save(self, content: bytes | str) -> File:
        """Create or replace the file (text is stored as UTF-8); size limits apply."""
        data = content.encode("utf-8") if isinstance(content, str) else bytes(content)
        encoded = base64.b64encode(data).decode("ascii")
        _rt().call("file.save", {"path": self._path, "content": encoded})
        return self

    def exists(self) -> bool:
        """True if the file exists."""
        return bool(_rt().call("file.exists", {"path": self._path}))

    def delete(self) -> None:
        """Delete the file (ResourceNotFoundError if missing)."""
        _rt().call("file.delete", {"path": self._path})


class System:
    """Access to the workspace: settings, flows, files, configuration and the own user."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<flow_api.System>"

    def setting(self, name: str) -> Setting:
        """Handle to the setting ``name`` (no server call until you use it)."""
        return Setting(str(name))

    def flow(self, name: str) -> Flow:
        """Handle to the flow ``name`` (no server call until you use it)."""
        return Flow(str(name))

    def file(self, path: str) -> File:
        """Handle to the workspace file ``path`` (no server call until you use it)."""
        return File(str(path))

    def files(self, prefix: str = "") -> list[str]:
        """The paths of the workspace's files, sorted; only those starting with ``prefix``."""
        return list(_rt().call("file.list", {"prefix": str(prefix)}))

    @property
    def config(self) -> dict[str, Any]:
        """The workspace configuration (rendered), as a dict."""
        return _rt().config

    def get_own_user(self) -> User:
        """The user this execution runs as."""
        data = _rt().call("user.get_own", {})
        return User(data if isinstance(data, dict) else {})
