"""The worker's side of ``flow_api``: every call a script makes, checked and done in the store."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from flowlink.access import policy
from flowlink.access.audit import record_denials
from flowlink.access.service import Principal, principal_from_descriptor
from flowlink.errors import FlowlinkError, Invalid, NotFound
from flowlink.execution_status import ExecutionStatus
from flowlink.executions import service as executions
from flowlink.executions.starts import StartRequest, start_local
from flowlink.observability.logs import redact as keep_out_of_server_logs
from flowlink.runtime.flow_api import (
    DependencyFailedError,
    FlowApiError,
    PermissionDeniedError,
    ResourceNotFoundError,
)
from flowlink.settings import ServerSettings, resolve_secret_key
from flowlink.store import notify
from flowlink.store.engine import Store
from flowlink.store.models import Execution, User, Workspace
from flowlink.workspaces import files
from flowlink.workspaces import service as workspaces

LOG_FLUSH_SECONDS = 0.1
LOG_FLUSH_LINES = 200
MIN_REDACTED_LENGTH = 4  # shorter secret strings are not redacted (they would shred the log)
REDACTED = "[secret]"


def _secret_strings(value: Any) -> Iterator[str]:
    """Every string inside a secret's value (and its JSON), as it could appear in a log."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secret_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _secret_strings(item)
    if isinstance(value, dict | list):
        yield json.dumps(value)


class LogCap:
    """The log lines and bytes one execution may store; what is over is counted, not kept.

    A line that would pass either limit and every line after it are dropped; the first drop
    adds a line saying so, and :meth:`summary` is the final line with what was dropped.
    """

    def __init__(self, max_lines: int, max_bytes: int) -> None:
        self.max_lines = max_lines
        self.max_bytes = max_bytes
        self.lines = 0
        self.bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0

    def admit(self, lines: list[str]) -> list[str]:
        """The lines to keep of ``lines`` (plus the notice when the limit is reached)."""
        if self.dropped_lines:
            self._drop(lines)
            return []
        kept: list[str] = []
        for index, line in enumerate(lines):
            size = _size(line)
            if self.lines + 1 > self.max_lines or self.bytes + size > self.max_bytes:
                self._drop(lines[index:])
                kept.append(
                    f"[flowlink] log limit reached ({self.max_lines} lines or"
                    f" {self.max_bytes} bytes per execution): further output is dropped"
                )
                break
            self.lines += 1
            self.bytes += size
            kept.append(line)
        return kept

    def _drop(self, lines: list[str]) -> None:
        self.dropped_lines += len(lines)
        self.dropped_bytes += sum(_size(line) for line in lines)

    def summary(self) -> str | None:
        """The final line telling how much was dropped (None if nothing was)."""
        if not self.dropped_lines:
            return None
        return (
            f"[flowlink] {self.dropped_lines} log lines ({self.dropped_bytes} bytes) over the"
            " limit were dropped"
        )


def _size(line: str) -> int:
    """Bytes a log line takes (UTF-8 with its newline; invalid characters count as one)."""
    return len(line.encode("utf-8", "replace")) + 1


class AwaitedChild:
    """A parent's wait for a child, noted with the worker (``ChildLauncher.waiting_for``).

    When that worker ends the child, it sets the parent running again in the ending's
    transaction and, once that is committed, hands the child's record over here: a parent
    whose child runs in this worker neither reads the store nor waits for a notification.
    """

    __slots__ = ("_delivered", "child_id", "parent_id", "record")

    def __init__(self, child_id: str, parent_id: str) -> None:
        self.child_id = child_id
        self.parent_id = parent_id
        self.record: dict[str, Any] | None = None
        self._delivered = threading.Event()

    def deliver(self, record: dict[str, Any] | None) -> None:
        """The child's ending (and the parent's resume) is committed: ``record`` is the
        child's view, None if this ending did not end it (it had ended already)."""
        self.record = record
        self._delivered.set()

    def wait(self, timeout: float) -> bool:
        """Whether the ending was delivered within ``timeout`` seconds."""
        return self._delivered.wait(timeout)


class ChildLauncher(Protocol):
    """What the worker offers for starting a child directly (see ``_start_child_now``)."""

    id: str

    def reserve_slot(self) -> bool: ...

    def release_reservation(self) -> None: ...

    def launch_reserved(self, claimed: executions.Claimed) -> None: ...

    def waiting_for(self, awaited: AwaitedChild) -> Callable[[], None]: ...


class EmitEvent(Protocol):
    """Records a custom event a flow emits and starts the automations listening to it."""

    def __call__(
        self,
        session: Session,
        workspace: Workspace,
        execution_id: str,
        event_type: str,
        payload: Any,
        *,
        max_depth: int,
    ) -> object: ...


class StartRemote(Protocol):
    """Starts a child execution in the workspace linked through the sync config ``remote``."""

    def __call__(
        self,
        session: Session,
        workspace: Workspace,
        remote: str,
        *,
        flow: str,
        inputs: dict[str, Any] | None,
        use_remote_flow: bool,
        parent: Execution,
        default_max_runtime: float,
    ) -> Execution: ...


@dataclass(frozen=True)
class FlowHooks:
    """What flow API calls do through the domains built on executions (automations, links).

    Those domains import executions, so the worker's creator passes them in.
    """

    emit: EmitEvent
    start_remote: StartRemote


class FlowApiCalls:
    """Answers the ``flow_api`` calls of one running execution."""

    def __init__(
        self,
        store: Store,
        settings: ServerSettings,
        *,
        execution: Execution,
        workspace_slug: str,
        cancelled: threading.Event,
        deadline: float,
        release_slot: Callable[[], None],
        retake_slot: Callable[[], None],
        hooks: FlowHooks,
        worker: ChildLauncher | None = None,
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.settings = settings
        self.execution_id = execution.id
        self._execution = execution  # as claimed (detached); what a child inherits never changes
        self.workspace_id = execution.workspace_id
        self.workspace_slug = workspace_slug
        self.cancelled = cancelled
        self.deadline = deadline
        self._release_slot = release_slot
        self._retake_slot = retake_slot
        self._worker = worker
        self._pending_logs: list[str] = []
        self.log_cap = LogCap(settings.log_max_lines, settings.log_max_bytes)
        self._last_flush = time.monotonic()
        self._acting = (execution.principal, execution.user_id)
        # An app instance's flow: its settings and custom events are its own (prefixed).
        self._app_prefix = f"{execution.app['instance']}." if execution.app else ""
        self._principal: Principal | None = None
        self._denials: list[policy.Denial] = []
        self._secrets: list[str] = []  # values of secrets this script read, longest first
        self._handlers: dict[str, Callable[[Session, Workspace, dict[str, Any]], Any]] = {
            "execution.get": self._execution_get,
            "execution.save": self._execution_save,
            "execution.emit": self._emit,
            "setting.get": self._setting_get,
            "setting.save": self._setting_save,
            "setting.exists": self._setting_exists,
            "setting.delete": self._setting_delete,
            "flow.get": self._flow_get,
            "file.get": self._file_get,
            "file.save": self._file_save,
            "file.exists": self._file_exists,
            "file.delete": self._file_delete,
            "file.list": self._file_list,
            "user.get_own": self._user_get_own,
        }
        # Calls that manage their own transactions (waiting must not hold one).
        self._direct: dict[str, Callable[[dict[str, Any]], Any]] = {
            "execution.wait": lambda params: self._wait(str(params.get("id"))),
            "execution.start_child": self._start_child_now,
        }

    def methods(self) -> list[str]:
        """Every ``flow_api`` call this answers (the surface the permission matrix covers)."""
        return sorted({*self._handlers, *self._direct})

    # --- entry points for the runtime -----------------------------------------------------

    def handle(self, method: str, params: dict[str, Any]) -> Any:
        """Do one call; domain errors become the ``flow_api`` exceptions of the same meaning."""
        self.flush_logs()
        direct = self._direct.get(method)
        if direct is not None:
            return direct(params)
        handler = self._handlers.get(method)
        if handler is None:
            raise FlowApiError(f"unknown flow_api call {method!r}")
        try:
            with self.store.write() as session:
                workspace = session.get(Workspace, self.workspace_id)
                if workspace is None:
                    raise ResourceNotFoundError("the workspace of this execution was deleted")
                return handler(session, workspace, params)
        except NotFound as error:
            raise ResourceNotFoundError(error.message) from error
        except FlowlinkError as error:
            raise FlowApiError(error.message) from error

    def redact(self, text: str) -> str:
        """``text`` with the value of every secret this execution read replaced by [secret]."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def write_logs(self, lines: list[str]) -> None:
        """Buffer log lines; they reach the store within ``LOG_FLUSH_SECONDS``.

        Values of secrets the script read are redacted first; lines over the execution's log
        limit are only counted (see :class:`LogCap`).
        """
        if self._secrets:
            lines = [self.redact(line) for line in lines]
        self._pending_logs.extend(self.log_cap.admit(lines))
        if (
            len(self._pending_logs) >= LOG_FLUSH_LINES
            or time.monotonic() - self._last_flush >= LOG_FLUSH_SECONDS
        ):
            self.flush_logs()

    def take_pending_logs(self) -> list[str]:
        """Hand over the log lines not yet written (the worker writes them with the ending).

        They end with the line telling how many lines were over the limit, if any were.
        """
        self._record_denials()
        lines, self._pending_logs = self._pending_logs, []
        summary = self.log_cap.summary()
        if summary is not None:
            lines.append(summary)
        return lines

    def flush_logs(self) -> None:
        """Write buffered log lines now."""
        self._last_flush = time.monotonic()
        self._record_denials()
        if not self._pending_logs:
            return
        lines, self._pending_logs = self._pending_logs, []
        with self.store.write() as session:
            executions.append_logs(session, self.execution_id, lines)

    # --- permissions ----------------------------------------------------------------------

    def _authorize(
        self,
        session: Session,
        workspace: Workspace,
        action: str,
        subject: str,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        """Raise PermissionDeniedError unless the execution's principal may do this (see policy)."""
        principal = self._principal_for(session)
        try:
            policy.authorize(principal, action, subject, workspace, attributes)
        except (policy.AccessDenied, policy.WorkspaceHidden) as error:
            self._denials.append(dataclasses.replace(error.denial, execution_id=self.execution_id))
            reason = error.denial.reason
            raise PermissionDeniedError(f"permission denied: {reason}") from None

    def _principal_for(self, session: Session) -> Principal:
        """Who this execution acts as (loaded once)."""
        if self._principal is None:
            descriptor, user_id = self._acting
            self._principal = principal_from_descriptor(
                session, descriptor, user_id, self.workspace_id
            )
        return self._principal

    def _record_denials(self) -> None:
        """Write denials as ``access.denied`` events (outside the denied call's transaction)."""
        if self._denials:
            denials, self._denials = self._denials, []
            record_denials(self.store, denials)

    # --- calls ----------------------------------------------------------------------------

    def _target(self, session: Session, workspace: Workspace, execution_id: Any) -> Execution:
        if execution_id in (None, "", self.execution_id):
            execution = session.get(Execution, self.execution_id)
            if execution is None:
                raise ResourceNotFoundError("this execution no longer exists")
            return execution
        return executions.get_execution(session, workspace, str(execution_id))

    def _authorize_read(self, session: Session, workspace: Workspace, execution: Execution) -> None:
        """Reading another execution needs ``read executions`` on its flow, as its GET route.

        An execution's own record and those of the children it started need nothing more, as
        ``POST .../executions`` with ``wait`` returns the execution it started.
        """
        if self.execution_id in (execution.id, execution.parent_id):
            return
        self._authorize(session, workspace, "read", "executions", {"flow": execution.flow_name})

    def _execution_get(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        execution = self._target(session, workspace, params.get("id"))
        self._authorize_read(session, workspace, execution)
        field = str(params.get("field") or "")
        if field == "script":
            return execution.script
        if field == "children":
            return executions.child_ids(session, execution.id)
        view = executions.execution_view(execution, workspace.slug)
        if field not in view:
            raise FlowApiError(
                f"unknown execution field {field!r}; known: {', '.join(sorted(view))}, script,"
                " children"
            )
        return view[field]

    def _execution_save(
        self, session: Session, workspace: Workspace, params: dict[str, Any]
    ) -> None:
        target = params.get("id")
        if target not in (None, "", self.execution_id):
            raise FlowApiError("an execution can only save its own outputs and message")
        outputs = params.get("outputs")
        if outputs is not None and not isinstance(outputs, dict):
            raise FlowApiError("outputs must be a dict")
        message = params.get("message")
        executions.save_progress(
            session,
            self.execution_id,
            outputs=outputs,
            message=None if message is None else str(message),
        )

    def _start_child(
        self, session: Session, workspace: Workspace, params: dict[str, Any]
    ) -> tuple[dict[str, Any], Execution | None]:
        """Create the child (or its mirror, for a remote one): the answer, and the child to
        run here (None when it runs in a linked workspace)."""
        self._authorize(session, workspace, "execute", "executions", {"flow": params.get("flow")})
        if params.get("run") is False:
            raise FlowApiError("run=False is not supported: a child starts when it is created")
        inputs = params.get("inputs")
        if inputs is not None and not isinstance(inputs, dict):
            raise FlowApiError("inputs must be a dict")
        if params.get("remote"):
            parent = session.get(Execution, self.execution_id)
            if parent is None:
                raise ResourceNotFoundError("this execution no longer exists")
            mirror = self.hooks.start_remote(
                session,
                workspace,
                str(params["remote"]),
                flow=str(params.get("flow")),
                inputs=inputs,
                use_remote_flow=bool(params.get("use_remote_flow")),
                parent=parent,
                default_max_runtime=self.settings.default_max_runtime,
            )
            return {"id": mirror.id, "remote": True}, None
        if params.get("use_remote_flow"):
            raise FlowApiError("use_remote_flow=True needs remote='<sync config name>'")
        if not params.get("wait") and session.get(Execution, self.execution_id) is None:
            # (with ``wait``, marking this execution waiting in the same transaction checks it)
            raise ResourceNotFoundError("this execution no longer exists")
        parent = self._execution
        child = start_local(
            session,
            workspace,
            StartRequest(flow=str(params.get("flow")), inputs=inputs),
            parent=parent,
            trigger={"type": "flow", "parent": parent.id},
            default_max_runtime=self.settings.default_max_runtime,
        )
        return {"id": child.id}, child

    def _start_child_now(self, params: dict[str, Any]) -> Any:
        """Create a child; if this worker has a free slot, it starts here at once.

        The hand-over skips the queue: no claim transaction and no wake-up round trip, which
        is most of the cost of a short child. With ``wait`` (``this.flow(...)``'s default)
        the same transaction marks this execution waiting, and the answer comes once the
        child ended, with its record: one call and one transaction instead of two each.
        """
        reserved = self._worker is not None and self._worker.reserve_slot()
        claimed: executions.Claimed | None = None
        wait = bool(params.get("wait")) and not params.get("remote")
        params = {**params, "wait": wait}
        awaited: AwaitedChild | None = None
        unnote: Callable[[], None] | None = None
        committed = False
        try:
            with self.store.write() as session:
                workspace = session.get(Workspace, self.workspace_id)
                if workspace is None:
                    raise ResourceNotFoundError("the workspace of this execution was deleted")
                result, child = self._start_child(session, workspace, params)
                child_id = str(result["id"])
                if wait:
                    if not executions.set_waiting(session, self.execution_id, True):
                        self._check_running(session)
                    if self._worker is not None:
                        awaited = AwaitedChild(child_id, self.execution_id)
                        unnote = self._worker.waiting_for(awaited)
                if reserved and self._worker is not None and child is not None:
                    claimed = executions.claim_new(
                        session, child, workspace, self._worker.id, self.settings.lease_seconds
                    )
            committed = True
        except NotFound as error:
            raise ResourceNotFoundError(error.message) from error
        except FlowlinkError as error:
            raise FlowApiError(error.message) from error
        finally:
            if reserved and (claimed is None or not committed) and self._worker is not None:
                self._worker.release_reservation()
            if not committed and unnote is not None:
                unnote()
        if claimed is not None and self._worker is not None:
            self._worker.launch_reserved(claimed)
        if wait:
            result["record"] = self._wait(
                child_id,
                marked=True,
                unnote=unnote,
                # run by this worker: its ending is handed over (else it may end elsewhere)
                awaited=awaited if claimed is not None else None,
            )
        return result

    def _check_running(self, session: Session) -> None:
        """This execution could not be marked waiting: raise if it no longer exists.

        (Otherwise it is not running, e.g. its cancel ended it already; it goes on as before,
        and its runner is stopped as usual.)
        """
        if session.get(Execution, self.execution_id) is None:
            raise ResourceNotFoundError("this execution no longer exists")

    def _setting_name(self, params: dict[str, Any]) -> str:
        return self._app_prefix + str(params.get("name"))

    def _emit(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> None:
        event_type = self._app_prefix + str(params.get("type"))
        self._authorize(session, workspace, "create", "events", {"type": event_type})
        self.hooks.emit(
            session,
            workspace,
            self.execution_id,
            event_type,
            params.get("payload"),
            max_depth=self.settings.event_trigger_depth,
        )

    def _setting_get(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        name = self._setting_name(params)
        self._authorize(session, workspace, "read", "settings", {"setting": name})
        setting = workspaces.get_setting(session, workspace, name)
        if not setting.secret:
            return setting.value
        value = workspaces.setting_value(setting, resolve_secret_key(self.settings))
        self._remember_secret(value)
        return value

    def _remember_secret(self, value: Any) -> None:
        known = set(self._secrets)
        known.update(s for s in _secret_strings(value) if len(s) >= MIN_REDACTED_LENGTH)
        self._secrets = sorted(known, key=len, reverse=True)
        for secret in self._secrets:
            keep_out_of_server_logs(secret)  # this process now knows it

    def _setting_save(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> None:
        name = self._setting_name(params)
        secret = params.get("secret")
        existing = workspaces.find_setting(session, workspace, name)
        manage = bool(secret) or (existing is not None and existing.secret)
        action = "manage" if manage else "update" if existing is not None else "create"
        self._authorize(session, workspace, action, "settings", {"setting": name})
        workspaces.put_setting(
            session,
            workspace,
            name,
            params.get("value"),
            execution_id=self.execution_id,
            secret=None if secret is None else bool(secret),
            secret_key=resolve_secret_key(self.settings),
        )
        if manage:
            self._remember_secret(params.get("value"))

    def _setting_exists(
        self, session: Session, workspace: Workspace, params: dict[str, Any]
    ) -> bool:
        name = self._setting_name(params)
        self._authorize(session, workspace, "read", "settings", {"setting": name})
        return workspaces.find_setting(session, workspace, name) is not None

    def _setting_delete(
        self, session: Session, workspace: Workspace, params: dict[str, Any]
    ) -> None:
        name = self._setting_name(params)
        existing = workspaces.find_setting(session, workspace, name)
        action = "manage" if existing is not None and existing.secret else "delete"
        self._authorize(session, workspace, action, "settings", {"setting": name})
        workspaces.delete_setting(session, workspace, name, execution_id=self.execution_id)

    def _flow_get(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        self._authorize(session, workspace, "read", "flows", {"flow": params.get("name")})
        flow = workspaces.get_flow(session, workspace, str(params.get("name")))
        view = workspaces.flow_view(flow)
        field = str(params.get("field") or "script")
        if field not in view:
            raise FlowApiError(f"unknown flow field {field!r}; known: {', '.join(sorted(view))}")
        return view[field]

    def _file_get(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        path = files.check_path(params.get("path"))
        self._authorize(session, workspace, "read", "files", {"path": path})
        found = files.get_file(session, workspace, path)
        field = str(params.get("field") or "content")
        if field == "content":
            return base64.b64encode(found.content).decode("ascii")
        view = files.file_view(found)
        if field not in view:
            raise FlowApiError(
                f"unknown file field {field!r}; known: content, {', '.join(sorted(view))}"
            )
        return view[field]

    def _file_save(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> None:
        path = files.check_path(params.get("path"))
        exists = files.find_file(session, workspace, path) is not None
        self._authorize(
            session, workspace, "update" if exists else "create", "files", {"path": path}
        )
        try:
            content = base64.b64decode(str(params.get("content") or ""), validate=True)
        except ValueError:
            raise FlowApiError("file content must be bytes or text") from None
        files.put_file(session, workspace, path, content, execution_id=self.execution_id)

    def _file_exists(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> bool:
        path = files.check_path(params.get("path"))
        self._authorize(session, workspace, "read", "files", {"path": path})
        return files.find_file(session, workspace, path) is not None

    def _file_delete(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> None:
        path = files.check_path(params.get("path"))
        self._authorize(session, workspace, "delete", "files", {"path": path})
        files.delete_file(session, workspace, path, execution_id=self.execution_id)

    def _file_list(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        self._authorize(session, workspace, "read", "files")
        prefix = str(params.get("prefix") or "")
        return [
            f.path
            for f in files.list_files(session, workspace)
            if f.path.startswith(prefix)
            and policy.allows(
                self._principal_for(session), "read", "files", workspace, {"path": f.path}
            )
        ]

    def _user_get_own(self, session: Session, workspace: Workspace, params: dict[str, Any]) -> Any:
        execution = session.get(Execution, self.execution_id)
        user = session.get(User, execution.user_id) if execution and execution.user_id else None
        if user is None:
            return {"id": None, "name": "system", "is_admin": False}
        return {"id": user.id, "name": user.username, "is_admin": user.is_admin}

    # --- waiting on a child ---------------------------------------------------------------

    def _wait(
        self,
        child_id: str,
        *,
        marked: bool = False,
        unnote: Callable[[], None] | None = None,
        awaited: AwaitedChild | None = None,
    ) -> dict[str, Any]:
        """Block until the child ends; our runner slot is free for others meanwhile.

        ``marked``: this execution is already marked waiting (by the transaction that created
        the child), and ``unnote`` ends the worker's note that it waits for the child. An
        ending written by this process's worker sets this execution running again in its own
        transaction; otherwise (the child ran elsewhere) this does it when it wakes.
        ``awaited``: the note of a child that this process's worker runs; its ending is handed
        over, so this reads the store only if none came within the poll interval.
        """
        if unnote is None and self._worker is not None:
            unnote = self._worker.waiting_for(AwaitedChild(child_id, self.execution_id))
        resumed = False
        try:
            if not marked:
                with self.store.write() as session:
                    workspace = session.get(Workspace, self.workspace_id)
                    if workspace is None:
                        raise ResourceNotFoundError("the workspace of this execution was deleted")
                    try:
                        child = executions.get_execution(session, workspace, child_id)
                    except Invalid as error:
                        raise FlowApiError(error.message) from error
                    except NotFound as error:
                        raise ResourceNotFoundError(error.message) from error
                    self._authorize_read(session, workspace, child)
                    if child.status in executions.ENDED:
                        resumed = True  # never marked waiting
                        return self._ended_view(executions.execution_view(child, workspace.slug))
                    executions.set_waiting(session, self.execution_id, True)
            self._release_slot()
            try:
                record, resumed = self._wait_for_end(child_id, awaited)
                return self._ended_view(record)
            finally:
                self._retake_slot()
        finally:
            if unnote is not None:
                unnote()
            if not resumed:
                with self.store.write() as session:
                    executions.set_waiting(session, self.execution_id, False)

    def _wait_for_end(
        self, child_id: str, awaited: AwaitedChild | None
    ) -> tuple[dict[str, Any], bool]:
        """The ended child's record, and whether this execution was set running again."""
        interval = min(self.settings.poll_interval, 0.25)
        if awaited is not None:
            handed = self._wait_handed_over(child_id, awaited, interval)
            if handed is not None:
                return handed
        return self._wait_in_store(child_id, interval)

    def _wait_handed_over(
        self, child_id: str, awaited: AwaitedChild, interval: float
    ) -> tuple[dict[str, Any], bool] | None:
        """Wait for the ending of a child this process's worker runs, handed over by it;
        the store is read only when nothing came within ``interval`` (did it end some other
        way, the lease reaper?). None: it ended without a record handed over."""
        while not awaited.wait(interval):
            self._check_still_waiting()
            found = self._read_ended(child_id)
            if found is not None:
                return found
        if awaited.record is not None:
            return awaited.record, True  # the ending's transaction resumed us
        return None

    def _wait_in_store(self, child_id: str, interval: float) -> tuple[dict[str, Any], bool]:
        """Read the child's status whenever an ending is announced (or every ``interval``)."""
        notifier = self.store.notifier
        while True:
            seen = notifier.counter(notify.ENDED)
            found = self._read_ended(child_id)
            if found is not None:
                return found
            self._check_still_waiting()
            notifier.wait(notify.ENDED, seen, interval)

    def _check_still_waiting(self) -> None:
        """Raise ``FlowApiError`` if this execution was cancelled or ran out of time."""
        if self.cancelled.is_set():
            raise FlowApiError("cancelled while waiting for a child execution")
        if time.monotonic() >= self.deadline:
            raise FlowApiError("maximum runtime exceeded while waiting for a child")

    def _read_ended(self, child_id: str) -> tuple[dict[str, Any], bool] | None:
        """The child's record if it ended, and whether this execution is no longer waiting."""
        with self.store.read() as session:
            statuses = executions.statuses(session, [child_id, self.execution_id])
            if child_id not in statuses:
                raise ResourceNotFoundError(f"execution {child_id} was deleted")
            if statuses[child_id] not in executions.ENDED:
                return None
            own = statuses.get(self.execution_id)
            current = session.get(Execution, child_id)
            assert current is not None  # in this same read transaction
            view = executions.execution_view(current, self.workspace_slug)
            return view, own is not None and own != ExecutionStatus.WAITING

    def _ended_view(self, view: dict[str, Any]) -> dict[str, Any]:
        """An ended child's record; ``DependencyFailedError`` unless it succeeded."""
        if view["status"] != ExecutionStatus.SUCCESS:
            raise DependencyFailedError(
                child_failure(view["id"], view["name"], view["status"], view["message"])
            )
        return view


_LINE_SUFFIX = re.compile(r" \(line (\d+)\)$")


def child_failure(child_id: str, flow: str, status: str, message: str | None) -> str:
    """The message of the ``DependencyFailedError`` a parent gets for a failed child.

    The child's own line moves into the text (``at line 4 of child``), so the parent's
    ``(line N)`` that follows never reads as a repeat: ``... ended with error at line 4 of
    child: ValueError: boom (line 7)``.
    """
    text = message or status
    where = ""
    match = _LINE_SUFFIX.search(text)
    if match:
        text = text[: match.start()]
        where = f" at line {match.group(1)} of {flow}"
    return f"child execution {child_id} ({flow}) ended with {status}{where}: {text}"
