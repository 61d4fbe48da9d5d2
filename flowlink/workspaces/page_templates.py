"""Rendering page templates in Jinja2's immutable sandbox, with autoescaping and a budget.

A template sees only the values it is given (``config``, ``data``, ``events``, ...), as plain
JSON values: no loader (no file access), no network, no attribute access to internals (the
sandbox refuses ``__class__`` and friends, and calling anything unsafe).

Pages render inside the server process, next to every other workspace's requests, so one
template must not be able to take the server's CPU or memory. Each render has a budget:

* CPU time (:data:`MAX_RENDER_CPU_SECONDS`), checked on every loop step and call, so nested
  loops and recursive macros stop;
* the size of a value the template builds (:data:`MAX_VALUE_CHARS`): ``*``, ``**``, ``+``
  and ``%`` are checked before they run, and so are the width, count and format arguments
  of the filters and string methods that could build a huge string in one step;
* the size of the rendered page (:data:`MAX_OUTPUT_CHARS`), counted while it is produced.

A template over its budget fails with :class:`RenderError` naming the limit.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError, nodes
from jinja2.exceptions import SecurityError
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "MAX_OUTPUT_CHARS",
    "MAX_RENDER_CPU_SECONDS",
    "MAX_VALUE_CHARS",
    "RenderError",
    "check_binop",
    "environment",
    "is_number",
    "render",
]

MAX_RENDER_CPU_SECONDS = 1.0
MAX_VALUE_CHARS = 1024 * 1024
MAX_OUTPUT_CHARS = 4 * 1024 * 1024
_MAX_NUMBER_BITS = 4096

_BUDGET_NAME = "__flowlink_budgeted"
# A width or precision in a %-format or {}-format spec: "%9999999s", "%(x)9999999s",
# "{:>9999999}".
_FORMAT_WIDTH = re.compile(r"(?:%(?:\([^)]*\))?|\{[^{}]*:)[^a-zA-Z%{}]*?(\d{7,})")


class RenderError(Exception):
    """A template failed at render time (the message is safe to show)."""


def is_number(value: Any) -> bool:
    """A JSON number: an int or float that is not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_binop(operator: str, left: Any, right: Any, max_chars: int) -> None:
    """Refuse ``*`` and ``**`` (and ``+`` of sequences) whose result would be huge, before
    computing it: numbers over 4,096 bits, strings or lists over ``max_chars`` items."""
    size = 0
    if operator == "*":
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > _MAX_NUMBER_BITS:
                raise SecurityError("number too large")
        elif isinstance(right, int) and hasattr(left, "__len__"):
            size = len(left) * right
        elif isinstance(left, int) and hasattr(right, "__len__"):
            size = len(right) * left
        if size > max_chars:
            raise SecurityError("repetition too large")
    elif operator == "**":
        if not (is_number(left) and is_number(right)):
            raise SecurityError("** needs two numbers")
        if isinstance(left, int) and isinstance(right, int):
            if right > 0 and max(left.bit_length(), 1) * right > _MAX_NUMBER_BITS:
                raise SecurityError("number too large")
        elif abs(right) > _MAX_NUMBER_BITS:
            raise SecurityError("exponent too large")
    elif operator == "+" and hasattr(left, "__len__") and hasattr(right, "__len__"):
        size = len(left) + len(right)
    if size > max_chars:
        raise SecurityError(f"value too large (more than {max_chars} characters or items)")


class _Budget:
    """The CPU deadline of one render (thread CPU time: waiting for the GIL does not count)."""

    __slots__ = ("deadline",)

    def __init__(self) -> None:
        self.deadline = time.thread_time() + MAX_RENDER_CPU_SECONDS

    def check(self) -> None:
        if time.thread_time() > self.deadline:
            raise SecurityError(f"the page took more than {MAX_RENDER_CPU_SECONDS:g} s of CPU")


_budget: ContextVar[_Budget | None] = ContextVar("page_render_budget", default=None)


def _check_budget() -> None:
    budget = _budget.get()
    if budget is not None:
        budget.check()


def _budgeted(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every ``{% for %}`` loop iterates through this: each step checks the CPU budget."""
    budget = _budget.get()
    for item in iterable:
        if budget is not None:
            budget.check()
        yield item


def _check_chars(size: int, what: str) -> None:
    if size > MAX_VALUE_CHARS:
        raise SecurityError(f"{what} too large (more than {MAX_VALUE_CHARS} characters)")


def _check_format(text: Any, args: tuple[Any, ...]) -> None:
    if isinstance(text, str) and _FORMAT_WIDTH.search(text):
        raise SecurityError("format width or precision too large")
    values = [v for arg in args for v in (arg.values() if isinstance(arg, dict) else (arg,))]
    for value in values:
        if isinstance(value, int) and not isinstance(value, bool) and value > MAX_VALUE_CHARS:
            raise SecurityError("format width or precision too large")


# The string methods a template may call: those that cannot build a larger string, and
# those whose growth is checked below.
_STRING_METHODS = frozenset(
    {
        "capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha",
        "isascii", "isdecimal", "isdigit", "islower", "isnumeric", "isspace", "istitle",
        "isupper", "lower", "lstrip", "partition", "removeprefix", "removesuffix", "rfind",
        "rindex", "rpartition", "rsplit", "rstrip", "split", "splitlines", "startswith",
        "strip", "swapcase", "title", "upper",
        "center", "format", "format_map", "join", "ljust", "replace", "rjust", "zfill",
    }
)  # fmt: skip


def _check_string_method(text: str, name: str, args: tuple[Any, ...]) -> None:
    """Refuse a string method outside :data:`_STRING_METHODS`, or one whose result would be
    larger than :data:`MAX_VALUE_CHARS`."""
    if name not in _STRING_METHODS:
        raise SecurityError(f"the string method {name!r} is not available in page templates")
    if name in ("format", "format_map", "center", "ljust", "rjust", "zfill"):
        _check_format(text, args)
    elif name == "join" and args and hasattr(args[0], "__len__"):
        items = list(args[0])
        _check_chars(sum(len(str(item)) for item in items) + len(text) * len(items), "joined text")
    elif name == "replace" and len(args) >= 2:
        _check_replace(text, str(args[0]), str(args[1]), args[2] if len(args) > 2 else None)


def _check_replace(text: str, old: str, new: str, count: Any) -> None:
    found = len(text) + 1 if old == "" else text.count(old)
    if count is not None and int(count) >= 0:
        found = min(found, int(count))
    _check_chars(len(text) + found * max(len(new) - len(old), 0), "replaced text")


def _bounded_filters(filters: dict[str, Callable[..., Any]]) -> dict[str, Callable[..., Any]]:
    """The filters that can build a huge string from a small one, with their size checked
    before they run."""
    center, indent, replace, format_, slice_ = (
        filters["center"],
        filters["indent"],
        filters["replace"],
        filters["format"],
        filters["slice"],
    )

    def bounded_center(value: Any, width: int = 80) -> str:
        _check_chars(int(width), "center width")
        return str(center(value, width))

    def bounded_indent(value: Any, width: int | str = 4, *args: Any, **kwargs: Any) -> str:
        text = str(value)
        step = len(width) if isinstance(width, str) else int(width)
        _check_chars(len(text) + (text.count("\n") + 1) * step, "indented text")
        return str(indent(value, width, *args, **kwargs))

    def bounded_replace(eval_ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(str(value), str(old), str(new), count)
        return replace(eval_ctx, value, old, new, count)

    def bounded_format(value: Any, *args: Any, **kwargs: Any) -> str:
        _check_format(value, args + tuple(kwargs.values()))
        return str(format_(value, *args, **kwargs))

    def bounded_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
        _check_chars(int(slices), "slice count")
        return slice_(value, slices, fill_with)

    # replace takes the evaluation context as jinja's own does (autoescape-aware).
    bounded_replace.jinja_pass_arg = replace.jinja_pass_arg  # type: ignore[attr-defined]
    return {
        "center": bounded_center,
        "indent": bounded_indent,
        "replace": bounded_replace,
        "format": bounded_format,
        "slice": bounded_slice,
    }


class _PageEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with the render budget: loops, calls and operators are checked."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(
                nodes.Name(_BUDGET_NAME, "load"), [loop.iter], [], None, None, lineno=loop.lineno
            )
        return tree

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_budget()
        if operator == "%":
            if isinstance(left, str):
                _check_format(left, right if isinstance(right, tuple) else (right,))
        else:
            check_binop(operator, left, right, MAX_VALUE_CHARS)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text = value.__self__

        def bounded(*args: Any, **kwargs: Any) -> str:
            _check_format(text, args + tuple(kwargs.values()))
            return wrapped(*args, **kwargs)

        return bounded

    def call(
        __self,
        __context: Context,
        __obj: Any,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        _check_budget()
        for arg in (*args, *kwargs.values()):
            if isinstance(arg, str | list | tuple | dict):
                _check_chars(len(arg), "argument")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            _check_string_method(
                owner, getattr(__obj, "__name__", ""), args + tuple(kwargs.values())
            )
        return super().call(__context, __obj, *args, **kwargs)


@functools.cache
def environment() -> ImmutableSandboxedEnvironment:
    """The one sandboxed environment of page templates (no loader: no other files)."""
    env = _PageEnvironment(
        autoescape=True,
        undefined=ChainableUndefined,
        loader=None,
        auto_reload=False,
    )
    env.globals = {"range": env.globals["range"], _BUDGET_NAME: _budgeted}
    env.filters.update(_bounded_filters(env.filters))
    return env


@functools.lru_cache(maxsize=1024)
def _compiled(text: str) -> Template:
    return environment().from_string(text)


def render(text: str, values: Mapping[str, Any]) -> str:
    """Render a page template with ``values`` within its budget; :class:`RenderError` on any
    template failure or exceeded limit."""
    token = _budget.set(_Budget())
    try:
        parts: list[str] = []
        size = 0
        for part in _compiled(text).generate(**values):
            size += len(part)
            if size > MAX_OUTPUT_CHARS:
                raise SecurityError(f"the page is larger than {MAX_OUTPUT_CHARS} characters")
            parts.append(part)
        return "".join(parts)
    except TemplateError as exc:
        raise RenderError(f"{type(exc).__name__}: {exc.message or exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}") from None
    except MemoryError:
        raise RenderError("MemoryError: the page needs too much memory") from None
    finally:
        _budget.reset(token)
