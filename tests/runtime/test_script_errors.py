"""How script failures are reported: error_kind, message with line, traceback."""

from __future__ import annotations

from flowlink.runtime.pool import RunnerPool

from .conftest import pid_gone, run_script


def test_syntax_error_reports_line(pool: RunnerPool) -> None:
    run = run_script(
        pool, "import os\n\ndef handler(system, this, inputs)\n    pass\n", name="broken"
    )
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "syntax_error"
    assert run.outcome.message == "SyntaxError: expected ':' (line 3)"
    assert run.outcome.traceback is not None
    assert 'File "<flow broken>", line 3' in run.outcome.traceback
    assert "def handler(system, this, inputs)" in run.outcome.traceback

    run = run_script(pool, "def handler(system, this):\n\treturn 1\n        return 2\n")
    assert run.outcome.error_kind == "syntax_error"
    assert run.outcome.message is not None and "(line 3)" in run.outcome.message


def test_uncaught_exception_reports_script_line_and_traceback(pool: RunnerPool) -> None:
    run = run_script(
        pool,
        """
        import json

        def parse(text):
            return json.loads(text)

        def handler(system, this, inputs):
            x = 1
            return parse('{not json')
        """,
        name="parser",
    )
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "exception"
    assert run.outcome.message == (
        "JSONDecodeError: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1) (line 5)"
    )
    tb = run.outcome.traceback
    assert tb is not None
    assert not tb.startswith("Traceback")
    assert 'File "<flow parser>", line 9, in handler' in tb
    assert "return parse('{not json')" in tb
    assert 'File "<flow parser>", line 5, in parse' in tb
    assert "json.decoder.JSONDecodeError: Expecting property name" in tb
    # only the script's frames: nothing from the runner, flow_api or the stdlib
    assert "runner.py" not in tb and "flowlink" not in tb and "decoder.py" not in tb


def test_exception_at_module_level_and_chained(pool: RunnerPool) -> None:
    run = run_script(pool, "x = {}\ny = x['missing']\ndef handler(system, this):\n    pass\n")
    assert run.outcome.error_kind == "exception"
    assert run.outcome.message == "KeyError: 'missing' (line 2)"

    run = run_script(
        pool,
        """
        def handler(system, this):
            try:
                1 / 0
            except ZeroDivisionError as exc:
                raise ValueError('bad value') from exc
        """,
    )
    assert run.outcome.message == "ValueError: bad value (line 6)"
    assert run.outcome.traceback is not None
    assert "ZeroDivisionError: division by zero" in run.outcome.traceback
    assert "The above exception was the direct cause" in run.outcome.traceback


def test_sys_exit(pool: RunnerPool) -> None:
    run = run_script(pool, "import sys\ndef handler(system, this, inputs):\n    sys.exit(3)\n")
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "sys_exit"
    assert run.outcome.message == "script called sys.exit(3)"

    run = run_script(pool, "import sys\ndef handler(system, this):\n    sys.exit()\n")
    assert run.outcome.message == "script called sys.exit()"


def test_missing_or_bad_handler(pool: RunnerPool) -> None:
    run = run_script(pool, "print('no handler here')\n")
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "invalid_script"
    assert run.logs == ["no handler here"]

    run = run_script(pool, "def handler(this):\n    pass\n")
    assert run.outcome.error_kind == "invalid_script"
    assert run.outcome.message == "handler must accept (system, this) or (system, this, inputs)"


def test_runner_exiting_or_crashing_is_explained(pool: RunnerPool) -> None:
    run = run_script(pool, "import os\ndef handler(system, this):\n    os._exit(7)\n")
    assert run.outcome.status == "error"
    assert run.outcome.error_kind == "runner_lost"
    assert run.outcome.message == "runner exited unexpectedly with exit code 7"
    assert pid_gone(run.runner.pid)

    run = run_script(
        pool,
        "import os, signal\ndef handler(system, this):\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
    )
    assert run.outcome.error_kind == "runner_lost"
    assert run.outcome.message == "runner was killed by SIGSEGV"
