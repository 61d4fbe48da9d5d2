"""flow_api semantics through real runners (handler forms, outputs, logs, calls)."""

from __future__ import annotations

from flowlink.runtime.pool import RunnerPool

from .conftest import FakeWorker, run_script


def test_handler_with_inputs_argument(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import flow_api

        def handler(system: flow_api.System, this: flow_api.Execution, inputs: dict):
            return this.success('all done', total=inputs['a'] + inputs['b'])
        """,
        inputs={"a": 1, "b": 2},
    )
    assert run.outcome.status == "success"
    assert run.outcome.message == "all done"
    assert run.outcome.outputs == {"total": 3}
    assert run.outcome.error_kind is None


def test_legacy_handler_reads_inputs_locally(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this):
            value = this.get('input_value')
            this.success(f"got {value['name']}", name=value['name'])
        """,
        inputs={"name": "bob"},
    )
    assert run.outcome.status == "success"
    assert run.outcome.message == "got bob"
    assert run.outcome.outputs == {"name": "bob"}
    # input_value is answered by the runner itself
    assert run.worker.calls == []


def test_return_without_success_is_success_and_dict_becomes_outputs(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this, inputs):
            this.set_output(a=1)
            return {'b': 2}
        """,
    )
    assert run.outcome.status == "success"
    assert run.outcome.message is None
    assert run.outcome.outputs == {"a": 1, "b": 2}

    run = run_script(pool, "def handler(system, this):\n    return 'plain'\n")
    assert run.outcome.status == "success"
    assert run.outcome.outputs == {"result": "plain"}


def test_error_ends_immediately(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this):
            this.set_output(step=1)
            this.error('validation failed')
            this.set_output(step=2)
        """,
    )
    assert run.outcome.status == "error"
    assert run.outcome.message == "validation failed"
    assert run.outcome.error_kind == "flow_error"
    assert run.outcome.outputs == {"step": 1}


def test_success_cannot_be_swallowed_by_except_exception(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this):
            try:
                this.success('early', where='try')
            except Exception:
                this.set_output(where='except')
            raise RuntimeError('not reached')
        """,
    )
    assert run.outcome.status == "success"
    assert run.outcome.message == "early"
    assert run.outcome.outputs == {"where": "try"}


def test_log_print_and_raw_output_are_captured(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import os, sys, subprocess, logging

        def handler(system, this):
            print('first')
            this.log('second', 2, {'k': 'v'})
            print('to stderr', file=sys.stderr)
            this.log('multi\\nline')
            logging.warning('via logging')
            sys.stdout.buffer.write('bytes \\u00e9\\n'.encode())
            os.system('echo from-shell')
            subprocess.run(['sh', '-c', 'echo from-subprocess >&2'], check=True)
            print('no newline at the end', end='')
            return this.success('ok')
        """,
    )
    assert run.outcome.status == "success", run.outcome
    # output of other processes (fd 1/2 directly) is interleaved only approximately
    raw = {"from-shell", "from-subprocess"}
    assert raw <= set(run.logs), run.logs
    assert [line for line in run.logs if line not in raw] == [
        "first",
        "second 2 {'k': 'v'}",
        "to stderr",
        "multi",
        "line",
        "WARNING:root:via logging",
        "bytes é",
        "no newline at the end",
    ]


def test_save_set_output_and_get(pool: RunnerPool) -> None:
    worker = FakeWorker()
    worker.executions[1] = {"id": 1, "name": "test", "status": "running", "message": "m0"}
    run = run_script(
        pool,
        """
        def handler(system, this, inputs):
            this.save(output_value={'progress': 50}, message='halfway')
            this.set_output(progress=100, extra='x')
            this.save(message='only a message')
            return this.success(
                'done',
                status=this.get('status'),
                msg=this.get('message'),
                id=this.get('id'),
                name=this.get('name'),
                inp=this.get('input_value'),
            )
        """,
        inputs={"q": 1},
        worker=worker,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs == {
        "progress": 100,
        "extra": "x",
        "status": "running",
        "msg": "m0",
        "id": 1,
        "name": "test",
        "inp": {"q": 1},
    }
    assert worker.saves == [
        {"id": None, "outputs": {"progress": 50}, "message": "halfway"},
        {"id": None, "outputs": {"progress": 100, "extra": "x"}, "message": None},
        {"id": None, "outputs": None, "message": "only a message"},
    ]
    fields = [p["field"] for m, p in worker.calls if m == "execution.get"]
    assert fields == ["status", "message"]  # id, name, input_value answered locally


def test_child_flow_round_trip(pool: RunnerPool) -> None:
    worker = FakeWorker(flows={"double": {"script": "..."}})
    run = run_script(
        pool,
        """
        import flow_api

        def handler(system, this):
            child = this.flow('double', {'x': 21})
            handle = this.flow('double', {'x': 1}, remote_workspace_name='edge', wait=False)
            handle.wait()
            try:
                this.flow('missing')
            except flow_api.ResourceNotFoundError as exc:
                missing = str(exc)
            return this.success(
                'ok',
                doubled=child.get('output_value')['doubled'],
                status=child.status,
                child_id=child.id,
                missing=missing,
            )
        """,
        worker=worker,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs == {
        "doubled": 42,
        "status": "success",
        "child_id": 100,
        "missing": "flow 'missing' not found",
    }
    starts = [p for m, p in worker.calls if m == "execution.start_child"]
    assert starts[0] == {
        "flow": "double",
        "inputs": {"x": 21},
        "remote": None,
        "use_remote_flow": False,
        "run": True,
        "wait": True,
    }
    assert starts[1]["remote"] == "edge" and starts[1]["wait"] is False
    waits = [p for m, p in worker.calls if m == "execution.wait"]
    assert waits == [{"id": 100}, {"id": 101}]


def test_failed_child_raises_dependency_failed(pool: RunnerPool) -> None:
    worker = FakeWorker(flows={"flaky": {}}, child_status="error")
    run = run_script(
        pool,
        """
        import flow_api

        def handler(system, this):
            try:
                this.flow('flaky')
            except flow_api.DependencyFailedError as exc:
                this.log('caught', type(exc).__name__)
            this.flow('flaky')
        """,
        worker=worker,
    )
    assert run.logs == ["caught DependencyFailedError"]
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "dependency_failed"
    assert run.outcome.message is not None
    assert run.outcome.message.startswith("DependencyFailedError: child execution 101")
    assert "child failed" in run.outcome.message
    assert "(line 9)" in run.outcome.message


def test_settings_flows_user_config_emit(pool: RunnerPool) -> None:
    worker = FakeWorker(settings={"api": {"token": "t"}}, flows={"other": {"script": "print(1)"}})
    run = run_script(
        pool,
        """
        import flow_api

        def handler(system, this):
            out = {}
            out['api'] = system.setting('api').get('value')
            out['exists_before'] = system.setting('new').exists()
            system.setting('new').save(value=[1, 2])
            out['new'] = system.setting('new').get('value')
            system.setting('new').delete()
            out['exists_after'] = system.setting('new').exists()
            try:
                system.setting('nope').get('value')
            except flow_api.ResourceNotFoundError as exc:
                out['not_found'] = str(exc)
            try:
                system.setting('locked.x').save(value=1)
            except flow_api.PermissionDeniedError as exc:
                out['denied'] = str(exc)
            try:
                this.get('nothing')  # unknown field: worker returns None
                system.flow('x').get('script')
            except flow_api.FlowApiError as exc:
                out['flow_error'] = type(exc).__name__
            out['script'] = system.flow('other').get('script')
            out['user'] = system.get_own_user().get('name')
            out['config'] = system.config['region']
            this.emit('order.created', {'id': 5})
            return this.success('ok', **out)
        """,
        worker=worker,
        config={"region": "eu"},
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.outputs == {
        "api": {"token": "t"},
        "exists_before": False,
        "new": [1, 2],
        "exists_after": False,
        "not_found": "setting 'nope' not found",
        "denied": "setting is read-only",
        "flow_error": "ResourceNotFoundError",
        "script": "print(1)",
        "user": "alice",
        "config": "eu",
    }
    assert worker.events == [("order.created", {"id": 5})]


def test_worker_bug_becomes_internal_error(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import flow_api
        from flow_api import _rt

        def handler(system, this):
            try:
                _rt().call('boom', {})
            except flow_api.FlowApiError as exc:
                return this.success(str(exc), kind=type(exc).__name__)
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.message == "internal error"
    assert run.outcome.outputs == {"kind": "FlowApiError"}


def test_non_json_outputs_raise_at_call_site(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        def handler(system, this):
            this.success('x', obj=object())
        """,
    )
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "exception"
    assert run.outcome.message is not None
    assert run.outcome.message.startswith("TypeError: outputs must be JSON serializable")
    assert run.outcome.message.endswith("(line 3)")


def test_forked_child_cannot_use_the_channel(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import os

        def handler(system, this):
            pid = os.fork()
            if pid == 0:
                try:
                    this.log('from child')
                except Exception as exc:
                    print('child error:', exc)
                this.success('child result')  # raises in the child, never reported
            _, status = os.waitpid(pid, 0)
            return this.success('parent result', child_exit=os.waitstatus_to_exitcode(status))
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.message == "parent result"
    assert run.outcome.outputs == {"child_exit": 1}
    assert "child error: flow_api cannot be used from a forked child process" in run.logs
    assert "from child" not in run.logs


def test_many_log_lines_are_batched_and_none_is_lost(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import sys, time

        def handler(system, this):
            for i in range(20000):
                print('line', i)
            this.log('via log')
            print('after a pause', end='')
            time.sleep(0.2)
            sys.stderr.write('tail without newline')
        """,
    )
    assert run.outcome.status == "success", run.outcome
    assert run.logs[:20000] == [f"line {i}" for i in range(20000)]
    assert run.logs[20000:] == ["via log", "after a pause", "tail without newline"]


def test_async_handler(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import asyncio

        async def handler(system, this, inputs):
            await asyncio.sleep(0.01)
            this.log('awaited')
            return this.success('async ok', n=inputs['n'])
        """,
        inputs={"n": 3},
    )
    assert run.outcome.status == "success", run.outcome
    assert run.outcome.message == "async ok"
    assert run.outcome.outputs == {"n": 3}
    assert run.logs == ["awaited"]
