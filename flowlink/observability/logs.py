"""Process logs: readable text by default, one JSON object per line with
``FLOWLINK_LOG_FORMAT=json``; every line carries the execution it belongs to, and no line
carries a secret.

While an execution is processed (``log_context``), each line of that thread carries its
``workspace``, ``executionId`` and ``correlationId``. A redacting filter on the handler
removes what must never be logged, whatever a message or traceback contains: bearer tokens
and flowlink API tokens, passwords in URLs, ``password=`` style pairs, PEM private keys, and
any value registered with ``redact`` (for example a secret setting read by a flow).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flowlink.timestamps import format_timestamp

REDACTED = "[redacted]"
FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")
_FIELDS: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "flowlink_log_fields", default=()
)
# (pattern, replacement): what must never be logged, whatever the message or traceback.
_PATTERNS = [
    (
        re.compile(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
            re.DOTALL,
        ),
        REDACTED,
    ),
    (re.compile(r"(?i)(\bbearer\s+)[^\s'\",]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"\bfl_[A-Za-z0-9_\-]{16,}"), REDACTED),
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]+@"), rf"\g<1>{REDACTED}@"),
    (
        re.compile(
            r"(?i)(\b(?:password|passwd|secret|token|private_key|api_key)[\"']?\s*[:=]\s*[\"']?)"
            r"[^\s\"',}]+"
        ),
        rf"\g<1>{REDACTED}",
    ),
]
_values: set[str] = set()
_values_lock = threading.Lock()
MIN_SECRET_LENGTH = 4  # shorter values would redact ordinary words


def redact(value: str) -> None:
    """Never log ``value`` (a secret this process has seen) from now on."""
    if len(value) >= MIN_SECRET_LENGTH:
        with _values_lock:
            _values.add(value)


def scrub(text: str) -> str:
    """``text`` with every secret replaced by ``[redacted]``."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    with _values_lock:
        values = sorted(_values, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Add fields (``workspace``, ``executionId``, ``correlationId``) to this thread's lines."""
    merged = {**dict(_FIELDS.get()), **{k: v for k, v in fields.items() if v}}
    token = _FIELDS.set(tuple(merged.items()))
    try:
        yield
    finally:
        _FIELDS.reset(token)


class ContextFilter(logging.Filter):
    """Puts the current log context on each record and removes secrets from it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate and scrub the record (never drops it)."""
        record.flowlink_fields = dict(_FIELDS.get())
        message = record.getMessage()
        record.msg, record.args = scrub(message), None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = scrub(formatter.formatException(record.exc_info))
            record.exc_info = None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (RFC 3339 UTC), level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        stamp = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": format_timestamp(stamp),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        entry.update(getattr(record, "flowlink_fields", {}))
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """Readable lines, with the execution context appended when there is one."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The record as text, plus ``[workspace=... executionId=...]``."""
        line = super().format(record)
        fields = getattr(record, "flowlink_fields", {})
        if fields:
            context = " ".join(f"{k}={v}" for k, v in fields.items())
            first, sep, rest = line.partition("\n")
            line = f"{first} [{context}]{sep}{rest}"
        return line


def log_format(environ: dict[str, str] | None = None) -> str:
    """``FLOWLINK_LOG_FORMAT``: ``text`` (default) or ``json``."""
    env = os.environ if environ is None else environ
    value = (env.get("FLOWLINK_LOG_FORMAT") or "text").strip().lower()
    if value not in FORMATS:
        raise ValueError(f"FLOWLINK_LOG_FORMAT must be one of {', '.join(FORMATS)}, got {value!r}")
    return value


def log_level(environ: dict[str, str] | None = None) -> int:
    """``FLOWLINK_LOG_LEVEL``: ``debug``, ``info`` (default), ``warning`` or ``error``."""
    env = os.environ if environ is None else environ
    value = (env.get("FLOWLINK_LOG_LEVEL") or "info").strip().lower()
    if value not in LEVELS:
        raise ValueError(f"FLOWLINK_LOG_LEVEL must be one of {', '.join(LEVELS)}, got {value!r}")
    return int(getattr(logging, value.upper()))


def configure_logging() -> str:
    """Send every log line of this process to stderr in the configured format; returns it."""
    chosen = log_format()
    if os.environ.get("FLOWLINK_SECRET_KEY"):
        redact(os.environ["FLOWLINK_SECRET_KEY"])
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(log_level())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per link exchange is noise
    adopt_library_loggers()
    return chosen


def adopt_library_loggers() -> None:
    """Route uvicorn's loggers (which it configures itself) through our handler."""
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        for old in list(logger.handlers):
            logger.removeHandler(old)
        logger.propagate = True
