"""The worker: claims queued executions and runs each in a fresh sandboxed runner process."""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from flowlink.background import BackgroundTasks
from flowlink.execution_status import ExecutionStatus, Outcome
from flowlink.executions import service as executions
from flowlink.executions import workers as registry
from flowlink.executions.calls import AwaitedChild, FlowApiCalls, FlowHooks
from flowlink.observability import metrics, tracing
from flowlink.observability.logs import log_context
from flowlink.runtime.pool import RunnerLimits, RunnerPool
from flowlink.runtime.session import drive
from flowlink.settings import ServerSettings, secret_key_path
from flowlink.store import notify
from flowlink.store.engine import Store, protected_paths

log = logging.getLogger(__name__)
FINISH_BATCH = 64
RUN_THREAD_IDLE = 30.0  # seconds an idle run thread waits for the next execution
OTHER_WORKERS_EVERY = 5.0  # seconds between looks at the registry for other worker processes


@dataclass(frozen=True)
class _Ending:
    """An execution's end, waiting to be recorded by the finisher."""

    id: str
    outcome: executions.Outcome
    logs: list[str]


class Worker:
    """Runs queued executions; any number of workers may share one store.

    ``concurrency`` bounds executions that are actually running. An execution waiting on a
    child gives its slot back while it waits, so nested ``this.flow(..., wait=True)`` calls can
    never starve their own children of runners, however deep they go.
    """

    def __init__(
        self,
        store: Store,
        settings: ServerSettings,
        *,
        hooks: FlowHooks,
        name: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.hooks = hooks
        self.id = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.pool = RunnerPool(
            warm_size=settings.warm_runners,
            limits=RunnerLimits(
                cpu_seconds=settings.runner_cpu_seconds,
                memory_mb=settings.runner_memory_mb,
                open_files=settings.runner_open_files,
                processes=settings.runner_processes,
            ),
            protected_paths=protected_paths(store.engine, [str(secret_key_path(settings))]),
            cgroups=settings.runner_cgroups,
        )
        self._runs: dict[str, threading.Event] = {}
        self._runs_lock = threading.Lock()
        self._busy = 0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._unsubscribe: list[Any] = []
        self._endings: queue.SimpleQueue[_Ending] = queue.SimpleQueue()
        # Run threads are kept for the next execution: handing one over is a queue put, not
        # a thread start (which waits until the new thread runs).
        self._to_run: queue.SimpleQueue[tuple[executions.Claimed, threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self._idle_run_threads = 0
        # The claim loop's wake-up: ``_backlog`` says work may be queued (a QUEUED
        # notification, the poll interval, or a claim that took all it asked for); a freed
        # slot alone wakes the loop but claims only when there may be a backlog.
        self._wakeup = threading.Condition()
        self._poked = False
        self._backlog = True
        # child id -> the wait of the parent in this process for it (see ``waiting_for``)
        self._waiting_on: dict[str, AwaitedChild] = {}
        self._handed_key = f"flowlink_handed_{self.id}"  # session.info: claimed before commit

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the runner pool and the claim and finish loops (see also ``schedule``)."""
        self.pool.start()
        self._log_sandbox()
        self._register()
        self._unsubscribe.append(self.store.notifier.subscribe(notify.CANCEL, self._on_cancel))
        self._unsubscribe.append(
            self.store.notifier.subscribe(notify.QUEUED, lambda _payload: self._poke(True))
        )
        self._listen("before_commit", self._hand_over_new, insert=True)
        self._listen("after_commit", self._launch_handed)
        self._listen("after_rollback", self._release_handed)
        for target, name in (
            (self._claim_loop, "claim"),
            (self._finish_loop, "finish"),
        ):
            thread = threading.Thread(target=target, name=f"flowlink-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("worker %s started (concurrency %d)", self.id, self.settings.worker_concurrency)

    def _listen(self, name: str, hook: Callable[[Session], None], insert: bool = False) -> None:
        """Hook this worker into the store's transactions (until it stops)."""
        target = self.store.session_class
        event.listen(target, name, hook, insert=insert)
        self._unsubscribe.append(lambda: event.remove(target, name, hook))

    def _log_sandbox(self) -> None:
        info = self.pool.sandbox_info()
        if info["limits"] == "rlimit":
            log.warning(
                "runner sandbox: mode %s; limits per process only (rlimits: %d MB address space,"
                " %d s CPU per process, %d processes per execution): %s",
                info["mode"],
                info["memory_mb"],
                info["cpu_seconds"],
                info["processes"],
                info.get("limits_note") or "control groups not available",
            )
        else:
            log.info(
                "runner sandbox: mode %s; limits per execution by %s: %d MB memory (processes and"
                " private tmpfs together), %d processes, %d s CPU",
                info["mode"],
                info["limits"],
                info["memory_mb"],
                info["processes"],
                info["cpu_seconds"],
            )

    def stop(self, grace: float = 10.0) -> None:
        """Stop claiming, give running executions ``grace`` seconds, then cancel the rest."""
        self._stopping.set()
        self._poke(False, always=True)
        deadline = time.monotonic() + grace
        while self.active_ids() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._runs_lock:
            for event in self._runs.values():
                event.set()
        while self.active_ids() and time.monotonic() < deadline + 5:
            time.sleep(0.05)
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        with self._runs_lock:
            idle, self._idle_run_threads = self._idle_run_threads, 0
        for _ in range(idle):
            self._to_run.put(None)
        for thread in self._threads:
            thread.join(timeout=2)
        self.pool.close()
        self._unregister()

    def active_ids(self) -> list[str]:
        """Ids of the executions this worker is running."""
        with self._runs_lock:
            return list(self._runs)

    # --- slots ----------------------------------------------------------------------------

    def _take_slot(self) -> None:
        with self._runs_lock:
            self._busy += 1

    def _give_slot(self) -> None:
        with self._runs_lock:
            self._busy -= 1
        self._poke(False)  # a slot is free: look for work if some may be queued

    def _poke(self, queued: bool, *, always: bool = False) -> None:
        """Wake the claim loop; ``queued``: new work may be waiting in the queue.

        A freed slot (``queued`` False) wakes it only when work may be queued: without a
        backlog the loop would look at nothing (it looks at its poll interval anyway), and
        every ending would cost a thread switch. ``always``: wake it regardless (to stop).
        """
        with self._wakeup:
            if not (queued or always or self._backlog):
                return
            self._poked = True
            if queued:
                self._backlog = True
            self._wakeup.notify()

    def _free_slots(self) -> int:
        with self._runs_lock:
            return self.settings.worker_concurrency - self._busy

    # --- loops ----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        looked = time.monotonic()
        while not self._stopping.is_set():
            free = self._free_slots()
            fallback = False  # a look only because time passed, not because work was announced
            with self._wakeup:
                self._poked = False
                if time.monotonic() - looked >= self.settings.poll_interval:
                    fallback = not self._backlog
                    self._backlog = True  # the fallback: look now and then anyway
                look = free > 0 and self._backlog
                if look:
                    self._backlog = False
            claimed: list[executions.Claimed] = []
            if look:
                looked = time.monotonic()
                wanted = min(free, 32)
                try:
                    # The fallback first reads whether anything is queued: an idle worker
                    # takes no write transaction (on SQLite, the one write lock).
                    if not fallback or self._queue_has_work():
                        with self.store.write() as session:
                            claimed = executions.claim(
                                session, self.id, wanted, self.settings.lease_seconds
                            )
                except Exception:
                    log.exception("claiming executions failed")
                    self._poke(True)
                    self._stopping.wait(1.0)
                    continue
                if len(claimed) == wanted:
                    self._poke(True)  # took all it asked for: more may be queued
            for item in claimed:
                self._launch(item)
            with self._wakeup:
                if not self._poked:
                    self._wakeup.wait(self.settings.poll_interval)

    def _queue_has_work(self) -> bool:
        with self.store.read() as session:
            return executions.any_queued(session)

    def _launch(self, claimed: executions.Claimed) -> None:
        with self._runs_lock:
            self._busy += 1
        self.launch_reserved(claimed)

    def reserve_slot(self) -> bool:
        """Take a slot now if one is free (for a child handed over directly)."""
        with self._runs_lock:
            if self._stopping.is_set() or self._busy >= self.settings.worker_concurrency:
                return False
            self._busy += 1
            return True

    def release_reservation(self) -> None:
        """Give back a slot taken with ``reserve_slot`` that was not used."""
        self._give_slot()

    def _hand_over_new(self, session: Session) -> None:
        """Before a transaction of this process commits: claim the executions it queued for
        this worker when it has free slots and no older work may be waiting in the queue.

        They start right after the commit, without a claim transaction or a wake-up of the
        claim loop; the rest stay queued (and announced) as usual.
        """
        ids = notify.announced(session, notify.QUEUED)
        if not ids or self._stopping.is_set():
            return
        with self._wakeup:
            if self._backlog:
                return  # the queue may hold older work: keep its order
        handed: list[executions.Claimed] = session.info.setdefault(self._handed_key, [])
        for execution_id in ids:
            if not execution_id or not self.reserve_slot():
                break
            claimed = executions.claim_created(
                session, execution_id, self.id, self.settings.lease_seconds
            )
            if claimed is None:
                self.release_reservation()
            else:
                handed.append(claimed)

    def _launch_handed(self, session: Session) -> None:
        for claimed in session.info.pop(self._handed_key, None) or ():
            self.launch_reserved(claimed)

    def _release_handed(self, session: Session) -> None:
        for _claimed in session.info.pop(self._handed_key, None) or ():
            self.release_reservation()

    def launch_reserved(self, claimed: executions.Claimed) -> None:
        """Run a claimed execution on a slot that is already counted."""
        cancelled = threading.Event()
        with self._runs_lock:
            self._runs[claimed.execution.id] = cancelled
            spare = self._idle_run_threads > 0
            if spare:
                self._idle_run_threads -= 1
        self._to_run.put((claimed, cancelled))
        if not spare:
            threading.Thread(target=self._run_thread, name="flowlink-run", daemon=True).start()

    def _run_thread(self) -> None:
        """Run executions handed over by ``launch_reserved``; end after a while without any."""
        while True:
            try:
                item = self._to_run.get(timeout=RUN_THREAD_IDLE)
            except queue.Empty:
                with self._runs_lock:
                    if self._idle_run_threads > 0:  # else a launch counted on this thread
                        self._idle_run_threads -= 1
                        return
                continue
            if item is None:
                return
            try:
                self._run_in_context(*item)
            except Exception:
                log.exception("a run thread failed")
            with self._runs_lock:
                self._idle_run_threads += 1

    def schedule(self, tasks: BackgroundTasks) -> None:
        """Add the heartbeat (every lease/3) and the lease reaper (every lease/2) to the
        process's background tasks; a failed run is logged and runs again next time."""
        lease = self.settings.lease_seconds
        tasks.every("worker heartbeat", self._heartbeat_seconds(), self.heartbeat, first="later")
        tasks.every("lease reaper", max(lease / 2, 0.5), self.reap, first="later")

    def heartbeat(self) -> None:
        """Say this worker is alive; renew the leases of the executions it runs and cancel
        those asked to stop. Nothing once the worker stops."""
        if self._stopping.is_set():
            return
        self._beat()
        ids = self.active_ids()
        if not ids:
            return
        with self.store.write() as session:
            to_cancel = executions.renew_leases(session, self.id, ids, self.settings.lease_seconds)
        for execution_id in to_cancel:
            self._on_cancel(execution_id)

    def reap(self) -> None:
        """End active executions whose worker's lease expired (a worker that was lost)."""
        with self.store.write() as session:
            lost = executions.reap_expired(session)
        if lost:
            log.warning("ended %d execution(s) whose worker was lost", len(lost))

    def _heartbeat_seconds(self) -> float:
        """The heartbeat's interval (a third of the lease)."""
        return max(self.settings.lease_seconds / 3, 0.2)

    def _register(self) -> None:
        """Appear in the worker registry (``GET /api/v1/workers``)."""
        with self.store.write() as session:
            registry.register(
                session,
                self.id,
                concurrency=self.settings.worker_concurrency,
                heartbeat_seconds=self._heartbeat_seconds(),
            )

    def _beat(self) -> None:
        """Tell the registry and the metrics this worker is alive, and how busy it is."""
        with self._runs_lock:
            busy = len(self._runs)
        warm = self.pool.warm_count
        metrics.set_runners(busy, warm)
        try:
            with self.store.write() as session:
                registry.heartbeat(session, self.id, busy=busy, warm=warm)
        except Exception:
            log.exception("worker heartbeat failed")

    def _unregister(self) -> None:
        metrics.set_runners(0, 0)
        try:
            with self.store.write() as session:
                registry.stopped(session, self.id)
        except Exception:
            log.exception("could not mark worker %s stopped", self.id)

    def _on_cancel(self, execution_id: str) -> None:
        with self._runs_lock:
            event = self._runs.get(execution_id)
        if event is not None:
            event.set()

    # --- one execution --------------------------------------------------------------------

    def _run_in_context(self, claimed: executions.Claimed, cancelled: threading.Event) -> None:
        """Run with every log line of this thread naming the execution."""
        execution = claimed.execution
        with (
            log_context(
                workspace=claimed.workspace_slug,
                executionId=execution.id,
                correlationId=execution.correlation_id,
            ),
            tracing.span(
                f"execution {execution.flow_name}",
                traceparent=execution.traceparent,
                **{
                    "flowlink.workspace": claimed.workspace_slug,
                    "flowlink.execution.id": execution.id,
                    "flowlink.correlation.id": execution.correlation_id,
                    "flowlink.flow": execution.flow_name,
                },
            ) as span,
        ):
            log.debug("execution started (flow %s)", execution.flow_name)
            outcome = self._run(claimed, cancelled)
            if outcome.status != ExecutionStatus.SUCCESS:
                tracing.set_error(span, f"{outcome.status}: {outcome.message or ''}")

    def _run(self, claimed: executions.Claimed, cancelled: threading.Event) -> executions.Outcome:
        execution = claimed.execution
        ended: list[executions.Outcome] = []

        def end(outcome: executions.Outcome, logs: list[str]) -> None:
            if self._stopping.is_set() and outcome.status == ExecutionStatus.CANCELLED:
                outcome = executions.Outcome(
                    ExecutionStatus.ERROR,
                    "the worker shut down before the execution finished",
                    {},
                    "worker_stopped",
                )
            log.debug("execution ended: %s %s", outcome.status, outcome.message or "")
            ended.append(outcome)
            self._ending(_Ending(execution.id, outcome, logs))

        try:
            self._execute(claimed, cancelled, end)
        except Exception as exc:
            log.exception("execution %s failed inside the worker", execution.id)
            if not ended:
                end(
                    executions.Outcome(
                        ExecutionStatus.ERROR,
                        f"internal error in the worker: {exc}",
                        {},
                        "internal",
                    ),
                    [],
                )
        return ended[0]

    def _ending(self, ending: _Ending) -> None:
        """Record an ending: at once in this thread when a parent of this process waits for
        it (the chain waits on nothing else), else batched by the finisher."""
        with self._runs_lock:
            awaited = ending.id in self._waiting_on
        if not awaited:
            self._endings.put(ending)
            return
        try:
            self._record_endings([ending])
        except Exception:
            log.exception(
                "recording the end of execution %s failed; retrying in a batch", ending.id
            )
            self._endings.put(ending)
            return
        self._release([ending])

    def waiting_for(self, awaited: AwaitedChild) -> Callable[[], None]:
        """Note that a parent (run here) waits for a child: the child's ending is then written
        at once, sets the parent running again in the same transaction and, once committed,
        is handed over to ``awaited``. Returns the function that ends the note."""
        child_id = awaited.child_id
        with self._runs_lock:
            self._waiting_on[child_id] = awaited

        def done() -> None:
            with self._runs_lock:
                if self._waiting_on.get(child_id) is awaited:
                    del self._waiting_on[child_id]

        return done

    def _finish_loop(self) -> None:
        """Record endings in batches: one transaction for all that ended meanwhile."""
        while True:
            try:
                first = self._endings.get(timeout=0.2)
            except queue.Empty:
                if self._stopping.is_set() and not self.active_ids():
                    return
                continue
            batch = [first]
            while len(batch) < FINISH_BATCH:
                try:
                    batch.append(self._endings.get_nowait())
                except queue.Empty:
                    break
            try:
                self._record_endings(batch)
            except Exception:
                log.exception("recording %d endings together failed; one by one", len(batch))
                for ending in batch:
                    try:
                        self._record_endings([ending])
                    except Exception:
                        log.exception("could not record the end of execution %s", ending.id)
            self._release(batch)

    def _release(self, batch: list[_Ending]) -> None:
        """The slots of recorded endings are free: look for work."""
        with self._runs_lock:
            for ending in batch:
                self._runs.pop(ending.id, None)
            self._busy -= len(batch)
        self._poke(False)

    def _record_endings(self, batch: list[_Ending]) -> None:
        with self._runs_lock:
            awaited = [self._waiting_on[e.id] for e in batch if e.id in self._waiting_on]
        views: dict[str, dict[str, Any] | None] = {a.child_id: None for a in awaited}
        with self.store.write() as session:
            for ending in batch:
                if ending.logs:
                    executions.append_logs(session, ending.id, ending.logs)
            executions.finish_many(
                session, [(e.id, e.outcome) for e in batch], worker_id=self.id, views=views
            )
            for waiting in awaited:
                executions.set_waiting(session, waiting.parent_id, False)
        for waiting in awaited:  # committed: the parents go on without reading it back
            waiting.deliver(views[waiting.child_id])

    def _execute(
        self,
        claimed: executions.Claimed,
        cancelled: threading.Event,
        end: Callable[[executions.Outcome, list[str]], None],
    ) -> None:
        """Run the execution; ``end(outcome, logs)`` once it ended and its runner is gone."""
        execution, slug = claimed.execution, claimed.workspace_slug
        start = {
            "op": "start",
            "execution": executions.execution_view(execution, slug),
            "script": execution.script,
            "inputs": execution.inputs or {},
            "config": claimed.config,
        }
        started = execution.started_at.timestamp() if execution.started_at else time.time()
        deadline = time.monotonic() + execution.max_runtime - max(0.0, time.time() - started)
        calls = FlowApiCalls(
            self.store,
            self.settings,
            execution=execution,
            workspace_slug=slug,
            cancelled=cancelled,
            deadline=deadline,
            release_slot=self._give_slot,
            retake_slot=self._take_slot,
            hooks=self.hooks,
            worker=self,
        )

        def ended(result: Outcome) -> None:
            logs = calls.take_pending_logs()
            if result.traceback:
                lines = result.traceback.rstrip("\n").splitlines()
                logs += [calls.redact(line) for line in lines]
            message = None if result.message is None else calls.redact(result.message)
            if result.status == ExecutionStatus.CANCELLED:
                message = message or "cancelled"
            end(executions.Outcome(result.status, message, result.outputs, result.error_kind), logs)

        runner = self.pool.acquire()
        # The ending is recorded once the runner is cleaned up: recorded earlier, the
        # clean-up (exit, sweep, the next warm runner's fork) overlapped the next child of a
        # waiting parent and made a chain slower on two cores (see docs/performance.md).
        ended(
            drive(
                runner,
                start,
                handle_call=calls.handle,
                on_logs=calls.write_logs,
                deadline=deadline,
                cancelled=cancelled,
            )
        )


def watch_other_workers(store: Store, tasks: BackgroundTasks, interval: float) -> None:
    """SQLite: hear what separate ``flowlink worker`` processes change.

    SQLite has no NOTIFY, so a run that another process starts or ends, or its log lines,
    announce nothing here. While the worker registry shows a running worker of another
    process, this job looks every ``interval`` seconds whether anything was committed
    (``PRAGMA data_version``) and, if so, wakes every waiter to look again. A server alone
    on its SQLite store (the usual case) pays one registry read every few seconds.
    """
    if store.dialect != "sqlite":
        return
    state: dict[str, Any] = {"checked": 0.0, "others": False, "version": None}

    def look() -> None:
        now = time.monotonic()
        if now - state["checked"] > OTHER_WORKERS_EVERY:
            with store.read() as session:
                state["others"] = any(
                    w.status is registry.WorkerStatus.RUNNING and w.pid != os.getpid()
                    for w in registry.list_workers(session)
                )
            state["checked"] = now
        if not state["others"]:
            return
        version = store.data_version()
        if version != state["version"]:
            state["version"] = version
            for channel in (notify.ENDED, notify.LOGS, notify.EVENTS, notify.LINK):
                store.notifier.fire(channel, "")

    tasks.every("SQLite changes of other workers", interval, look)
