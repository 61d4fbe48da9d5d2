"""JSON values that are safe to store and to serve: valid Unicode, finite numbers.

Python's ``json`` accepts what strict JSON (and the store) does not: lone UTF-16 surrogates
(``"\\ud800"``), which cannot be encoded as UTF-8, and ``NaN``/``Infinity`` (or ``1e999``),
which are not JSON numbers. PostgreSQL also refuses the NUL character (``"\\u0000"``) in
text and ``jsonb``. Input from outside is *checked* (``find_problem``, ``check_value``) and
refused naming the field; output of scripts and data already stored are *repaired*
(``repair``): a lone surrogate or a NUL becomes U+FFFD, a non-finite number ``null``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flowlink.errors import Invalid

__all__ = [
    "REPLACEMENT",
    "check_value",
    "dumps",
    "find_problem",
    "loads_checked",
    "loads_stored",
    "repair",
    "repair_text",
    "text_problem",
]

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_UNFIT = re.compile("[\x00\ud800-\udfff]")
# In JSON text written with ``ensure_ascii``: what may decode to a surrogate or a non-finite.
_SUSPECT_TEXT = re.compile(r"\\u[dD][89a-fA-F]|\\u0000|NaN|Infinity|[0-9][eE]\+?[0-9]{3}")


def _bad_text(text: str) -> bool:
    return "\x00" in text or (not text.isascii() and _SURROGATE.search(text) is not None)


def text_problem(text: str) -> str | None:
    """Why ``text`` cannot be stored (a lone surrogate, a NUL character), or None."""
    if "\x00" in text:
        return "the NUL character (\\u0000) is not allowed"
    if not text.isascii() and _SURROGATE.search(text) is not None:
        return "invalid Unicode: a lone surrogate (\\ud800-\\udfff)"
    return None


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}.{part}" if path else str(part)
    return f"{path}.{part}" if path else part


def find_problem(value: Any, path: str = "") -> tuple[str, str] | None:
    """The first ``(field, reason)`` that makes ``value`` unfit for JSON, or None.

    ``field`` is a dotted path from ``path`` (list indexes as numbers, as in validation
    errors). Iterative, so a deeply nested value cannot exhaust the stack.
    """
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            reason = text_problem(item)
            if reason is not None:
                return where or "body", reason
        elif isinstance(item, float):
            if not math.isfinite(item):
                return where or "body", "not a finite number (NaN and Infinity are not JSON)"
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                reason = text_problem(key) if isinstance(key, str) else None
                if reason is not None:
                    return _join(where, repair_text(key)), f"in a key: {reason}"
                stack.append((child, _join(where, str(key))))
        elif isinstance(item, list | tuple):
            for index in range(len(item) - 1, -1, -1):
                stack.append((item[index], _join(where, index)))
    return None


def check_value(value: Any, field: str = "") -> None:
    """Raise ``Invalid`` naming the field if ``value`` holds a lone surrogate or NaN/Infinity."""
    problem = find_problem(value, field)
    if problem is not None:
        where, reason = problem
        raise Invalid(f"{where}: {reason}", details={"field": where})


def repair_text(text: str) -> str:
    """``text`` with lone surrogates and NUL characters replaced by U+FFFD."""
    return _UNFIT.sub(REPLACEMENT, text) if _bad_text(text) else text


def repair(value: Any) -> Any:
    """``value`` with lone surrogates and NULs replaced by U+FFFD, non-finite numbers by None.

    Returns the very same object when nothing needed repair (the common case costs one walk).
    """
    if isinstance(value, str):
        return repair_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        changed = False
        out: dict[Any, Any] = {}
        for key, child in value.items():
            new_key = repair_text(key) if isinstance(key, str) else key
            new_child = repair(child)
            changed = changed or new_key is not key or new_child is not child
            out[new_key] = new_child
        return out if changed else value
    if isinstance(value, list | tuple):
        items = [repair(child) for child in value]
        if any(new is not old for new, old in zip(items, value, strict=True)):
            return items
        return value
    return value


def loads_checked(text: str | bytes, field: str = "body") -> Any:
    """Parse JSON and refuse (``Invalid``, naming the field) lone surrogates and NaN/Infinity.

    ``ValueError`` (not JSON) is left to the caller.
    """
    try:
        value = json.loads(text)
    except RecursionError:
        raise Invalid(f"{field}: nested too deeply", details={"field": field}) from None
    check_value(value, field)
    return value


def loads_stored(text: str) -> Any:
    """Parse a JSON value read from the store, repaired if a row written before holds bad data.

    Cheap for clean rows: the walk runs only when the text shows an escaped surrogate or a
    non-finite number.
    """
    value = json.loads(text)
    if _SUSPECT_TEXT.search(text):
        value = repair(value)
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of a repaired ``value``: never fails on (or passes on) bad stored data."""
    return json.dumps(repair(value), allow_nan=False, **kwargs)
